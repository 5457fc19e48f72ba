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


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """[B] DAPO's soft overlong punishment (Yu et al. 2025): 0 for a response of at most
    max_new_tokens - buffer tokens, then falling linearly to -penalty at max_new_tokens, so that
    long answers are discouraged before they are cut off."""
    over = (lengths.to(torch.float32) - (max_new_tokens - buffer)).clamp(min=0)
    return -penalty * (over / buffer).clamp(max=1.0)


def uniform_groups(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """[B] bool: the responses whose group's scores are all equal (DAPO's dynamic sampling leaves
    those groups out: their group-relative advantage is zero, so they only dilute the batch).
    Min against max rather than advantages.group_stats' std == 0: a group's mean of equal scores
    can round away from them, leaving a tiny std where the scores are exactly equal."""
    ids, index = torch.unique(groups, return_inverse=True)
    low = torch.full((len(ids),), float("inf"), dtype=scores.dtype).scatter_reduce(0, index, scores, "amin")
    high = torch.full((len(ids),), float("-inf"), dtype=scores.dtype).scatter_reduce(0, index, scores, "amax")
    return (high == low)[index]
