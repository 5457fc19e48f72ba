"""The reward model's normalisation, kept with the model itself.

After training, the RM stage picks a bias that makes the `sft` split's demonstrations score
mean 0 (InstructGPT) and saves it in the model's config.json under REWARD_NORM_KEY, with the raw
mean and std. Whoever scores with the model (rlhf.sampling.score, stage 3's rollout) adds
`reward_bias(model)`; a model without the key scores raw.
"""

from __future__ import annotations

import torch

REWARD_NORM_KEY = "rlhf_reward_normalization"  # in the RM's config.json: bias, raw_mean, raw_std


def reward_bias(model) -> float:
    return float((getattr(model.config, REWARD_NORM_KEY, None) or {}).get("bias", 0.0))


def clear_normalization(model) -> None:
    """Drops a saved normalisation (a re-run measures raw scores afresh)."""
    if hasattr(model.config, REWARD_NORM_KEY):
        delattr(model.config, REWARD_NORM_KEY)


def set_normalization(model, raw_demonstration_scores: torch.Tensor) -> dict[str, float]:
    """Stores the bias that makes these raw scores mean 0, with their mean and std."""
    mean, std = raw_demonstration_scores.mean().item(), raw_demonstration_scores.std().item()
    setattr(model.config, REWARD_NORM_KEY, {"bias": -mean, "raw_mean": mean, "raw_std": std,
                                            "demonstrations": len(raw_demonstration_scores)})
    return {"raw_demonstration_mean": mean, "raw_demonstration_std": std,
            "demonstration_score_mean": (raw_demonstration_scores - mean).mean().item()}
