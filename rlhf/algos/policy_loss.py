"""Policy losses, registered by name. One signature:

    loss(logprobs, old_logprobs, advantages, mask, cfg) -> (token losses [B, R], {stat name: tensor})

on [B, R] response tensors (`old_logprobs` as sampled, `mask` 1 on response tokens up to and
including the first EOS); `cfg` is the stage-3 config (rlhf.config.PPOStageConfig). How the token
losses become one number is a setting of its own, `ppo.loss_agg` (`aggregate` below): the token
mean of PPO and DAPO, GRPO's mean over responses of each one's token mean, or Dr. GRPO's token
sum over a constant.
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
    """Clipped surrogate objective per token, with its clip fraction and the update's approx-KL
    (k3 of the ratio) for monitoring. The ratio is clipped to [1 - clip, 1 + clip_high]
    (clip_high null = clip; DAPO's "clip-higher" raises only the upper end, 0.28)."""
    return clipped_surrogate(logprobs, old_logprobs, advantages, mask, cfg.clip, _clip_high(cfg))


@register_policy_loss("gspo")
def gspo(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
         mask: torch.Tensor, cfg):
    """GSPO (Zheng et al. 2025): one importance ratio per response, the geometric mean of its
    tokens' ratios, s = exp(mean_t(log pi - log pi_old)), clipped per response to
    [1 - clip, 1 + clip_high] (the paper: 3e-4, 4e-4) against the response's advantage. Every
    token of a response carries that response's loss, so ppo.loss_agg=seq_mean_token_mean
    averages over responses as the paper does."""
    lengths = mask.sum(1).clamp(min=1)
    log_ratio = ((logprobs - old_logprobs) * mask).sum(1) / lengths
    advantage = (advantages * mask).sum(1) / lengths  # per response (group advantages are constant over its tokens)
    ratio = torch.exp(log_ratio)
    unclipped = -advantage * ratio
    clipped = -advantage * torch.clamp(ratio, 1.0 - cfg.clip, 1.0 + _clip_high(cfg))
    per_response = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        stats = {"policy_clipfrac": (clipped > unclipped).float().mean(),
                 "approx_kl": masked_mean(torch.expm1(logprobs - old_logprobs) - (logprobs - old_logprobs), mask)}
    return per_response[:, None] * mask, stats


def _clip_high(cfg) -> float:
    return cfg.clip if cfg.clip_high is None else cfg.clip_high


def clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip: float, clip_high: float | None = None):
    """Per-token clipped surrogate losses [B, R] (0 off the mask) and their statistics."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + (clip if clip_high is None else clip_high))
    losses = torch.maximum(unclipped, clipped) * mask
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return losses, {"policy_clipfrac": clip_fraction, "approx_kl": approx_kl}


LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def aggregate(losses: torch.Tensor, mask: torch.Tensor, mode: str, *, rows: int, tokens: torch.Tensor,
              horizon: int) -> torch.Tensor:
    """A micro-batch's policy loss from its per-token `losses` [b, R], in the units stage 3 weights
    micro-batches by (each by its share of the minibatch's `tokens`; the minibatch has `rows`
    responses), so that the weighted sum over a minibatch's micro-batches is
      token_mean               sum of all token losses / tokens (PPO, DAPO)
      seq_mean_token_mean      mean over responses of each one's token mean (GRPO as published, GSPO)
      seq_mean_token_sum_norm  sum of all token losses / (rows x horizon), a constant per batch
                               (Dr. GRPO: no division by a response's own length, Liu et al. 2025)"""
    if mode == "token_mean":
        return masked_mean(losses, mask)
    own = mask.sum().clamp(min=1)  # undoes the loop's weight (own / tokens)
    if mode == "seq_mean_token_mean":
        return ((losses * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / rows * tokens / own
    if mode == "seq_mean_token_sum_norm":
        return (losses * mask).sum() / (rows * horizon) * tokens / own
    raise ValueError(f"ppo.loss_agg={mode!r}: choose one of {', '.join(LOSS_AGGREGATIONS)}")


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
