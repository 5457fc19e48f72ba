"""Stage 3: PPO against the reward model (losses.py: the tensor math)."""
