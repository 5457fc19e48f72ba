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
