"""Stage 3: online RL against a reward (PPO by default; the algorithm is registered pieces
named in conf/algo/). loop.py reads top to bottom: prompts, rollout, rewards, advantages,
optimise, log, checkpoint; rollout.py, roles.py and checkpoint.py hold the plumbing."""
