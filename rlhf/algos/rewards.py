"""From reward-model scores to the rewards stage 3 optimises."""

from __future__ import annotations

import torch


def shape_scores(scores: torch.Tensor, ended: torch.Tensor, *, clip: float | None,
                 no_eos_score: float) -> torch.Tensor:
    """[B] sequence scores: the reward source's score (a reward model's already normalised),
    clipped to +-clip when set; a response that never emitted EOS gets the fixed `no_eos_score`
    instead (the "EOS trick": an unfinished answer must not be scored as if it were one)."""
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return torch.where(ended, scores, torch.full_like(scores, no_eos_score))


def token_rewards(kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = -beta * KL_t on every response token, plus the sequence's score on its last one."""
    rewards = -beta * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards
