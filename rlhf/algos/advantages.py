"""Advantage estimators, registered by name. One signature:

    estimator(x: AdvantageInput, cfg) -> (advantages [B, R], returns [B, R] or None)

`cfg` is the stage-3 config (rlhf.config.PPOStageConfig). An estimator registered with
`needs_critic=True` gets the critic's values and returns the critic's targets; the others get
`values=None` and return None, and stage 3 then builds no critic at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from rlhf.algos.registry import Registry
from rlhf.core.ops import masked_whiten

ADVANTAGES = Registry("ppo.advantage")
register_advantage = ADVANTAGES.register


def needs_critic(name: str) -> bool:
    return bool(ADVANTAGES.info(name).get("needs_critic", False))


def needs_groups(name: str) -> bool:
    """The estimator compares responses to one prompt: ppo.samples_per_prompt must be >= 2."""
    return bool(ADVANTAGES.info(name).get("needs_groups", False))


@dataclass
class AdvantageInput:
    rewards: torch.Tensor  # [B, R] per token: -beta * KL, plus the sequence's score on its last token
    scores: torch.Tensor  # [B] the sequence scores alone (reward model, shaped)
    values: Optional[torch.Tensor]  # [B, R] the critic's value before each token; None without a critic
    mask: torch.Tensor  # [B, R] 1 on response tokens up to and including the first EOS
    groups: torch.Tensor  # [B] which prompt each response answers (samples_per_prompt share one id)
    total: Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over all ranks: global-batch statistics


@register_advantage("gae", needs_critic=True)
def gae_advantages(x: AdvantageInput, cfg):
    """PPO as InstructGPT runs it: GAE(gamma, lambda) on the per-token rewards, advantages
    whitened over the global batch; the critic's targets are advantages + values."""
    advantages, returns = gae(x.rewards, x.values, x.mask, cfg.gamma, cfg.lam)
    return masked_whiten(advantages, x.mask, total=x.total), returns


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over response tokens; value after the last token is 0.
    Returns (advantages, returns) with returns = advantages + values."""
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        # masked positions (after EOS) carry nothing back to the tokens before them
        next_advantage = next_advantage * mask[:, t]
        next_value = values[:, t] * mask[:, t]
        advantages[:, t] = next_advantage
    return advantages * mask, (advantages + values) * mask


def group_stats(values: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the mean, unbiased std and size of its group's `values` ([B] each). A group's
    rows are on one rank (each rank samples whole groups), so these need no collective."""
    ids, index = torch.unique(groups, return_inverse=True)
    count = torch.zeros(len(ids), dtype=values.dtype, device=values.device).index_add(0, index, torch.ones_like(values))
    total = torch.zeros_like(count).index_add(0, index, values)
    mean = total / count
    squares = torch.zeros_like(count).index_add(0, index, (values - mean[index]) ** 2)
    std = (squares / (count - 1).clamp(min=1)).sqrt()
    return mean[index], std[index], count[index]


@register_advantage("grpo", needs_critic=False, needs_groups=True)
def grpo_advantages(x: AdvantageInput, cfg):
    """GRPO (Shao et al. 2024): each response's reward against its group's,
    (R - mean_G) / (std_G + eps), on every one of its tokens. R is the sequence's total reward:
    the score, minus the KL penalty when ppo.kl_in_reward (GRPO keeps KL in the loss instead).
    ppo.scale_by_std=false drops the division (Dr. GRPO, Liu et al. 2025)."""
    total = x.rewards.sum(1)
    mean, std, _ = group_stats(total, x.groups)
    advantage = total - mean
    if cfg.scale_by_std:
        advantage = advantage / (std + 1e-4)
    return advantage[:, None] * x.mask, None


@register_advantage("rloo", needs_critic=False, needs_groups=True)
def rloo_advantages(x: AdvantageInput, cfg):
    """RLOO (Ahmadian et al. 2024): each response's sequence reward (score minus the KL penalty)
    against the mean reward of the other k - 1 responses to its prompt, on every token."""
    total = x.rewards.sum(1)
    mean, _, count = group_stats(total, x.groups)
    others = (mean * count - total) / (count - 1).clamp(min=1)
    return (total - others)[:, None] * x.mask, None


@register_advantage("reinforce_pp", needs_critic=False)
def reinforce_pp_advantages(x: AdvantageInput, cfg):
    """REINFORCE++ (Hu 2025): discounted returns of the KL-shaped per-token rewards, no critic,
    normalised over the whole global batch (every rank). ppo.group_baseline=true is the
    "-baseline" variant: the group's mean score is subtracted from each score first."""
    rewards = x.rewards
    if cfg.group_baseline:
        last = (x.mask.sum(1).long() - 1).clamp(min=0)
        rewards = rewards.clone()
        rewards[torch.arange(len(rewards), device=rewards.device), last] -= group_stats(x.scores, x.groups)[0]
    returns, _ = gae(rewards, torch.zeros_like(rewards), x.mask, cfg.gamma, 1.0)  # no values: lambda 1 is the return
    return masked_whiten(returns, x.mask, total=x.total), None
