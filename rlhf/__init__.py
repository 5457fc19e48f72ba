"""rlhf: InstructGPT-style RLHF (SFT -> reward model -> PPO) with Hydra and DeepSpeed."""

__version__ = "0.1.0"
