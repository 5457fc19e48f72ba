"""Policy losses, registered by name. One signature:

    loss(logprobs, old_logprobs, advantages, mask, cfg) -> (loss, {stat name: tensor})

on [B, R] response tensors (`old_logprobs` as sampled, `mask` 1 on response tokens up to and
including the first EOS); `cfg` is the stage-3 config (rlhf.config.PPOStageConfig).
"""

from __future__ import annotations

import torch

from rlhf.algos.registry import Registry
from rlhf.core.ops import masked_mean

POLICY_LOSSES = Registry("ppo.policy_loss")
register_policy_loss = POLICY_LOSSES.register


@register_policy_loss("ppo_clip")
def ppo_clip(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
             mask: torch.Tensor, cfg):
    """Clipped surrogate objective (as a loss, token mean), with its clip fraction and the
    update's approx-KL (k3 of the ratio) for monitoring."""
    return clipped_surrogate(logprobs, old_logprobs, advantages, mask, cfg.clip)


def clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip: float):
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return loss, {"policy_clipfrac": clip_fraction, "approx_kl": approx_kl}
