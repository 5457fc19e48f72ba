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


# ---- a sampler other than the policy (ppo.rollout_engine=vllm) ----

def truncated_is_weights(logprobs: torch.Tensor, engine_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """[B, R] min(pi_policy / pi_engine, cap) per token: truncated importance sampling (Yao et al.
    2025) for responses an engine sampled with numerics other than the policy's. The loop
    multiplies the advantages by it, which for the clipped surrogate and REINFORCE equals
    weighting each token's loss (both are linear in a positive weight on the advantage)."""
    return torch.exp(logprobs - engine_logprobs).clamp(max=cap).detach()


def logprob_mismatch(logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the engine's log-probs of its samples are from the policy's, per response token:
    the mean |difference|, the largest, and KL(engine || policy) estimated with k3 (never negative)."""
    log_ratio = (logprobs - engine_logprobs) * mask
    return {"engine_logprob_abs_diff": masked_mean(log_ratio.abs(), mask).item(),
            "engine_logprob_max_abs_diff": log_ratio.abs().max().item(),
            "engine_kl_per_token": masked_mean(torch.expm1(log_ratio) - log_ratio, mask).item()}
