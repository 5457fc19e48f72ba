"""PPO's tensor math, as InstructGPT and "The N+ Implementation Details of RLHF with PPO"
(Huang et al. 2024) specify it. Pure functions on [batch, response_tokens] tensors; `mask` is 1
on response tokens up to and including the first EOS, 0 after it (and on padding)."""

from __future__ import annotations

from typing import Callable

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """(x - mean) / std over the masked entries of the whole batch; unbiased variance as in
    the reference implementations. shift_mean=False keeps the mean (used for rewards). With
    several ranks, `total` sums a tensor across them, so the statistics are the global batch's."""
    count = total(mask.sum())
    mean = total((x * mask).sum()) / count.clamp(min=1)
    centered = (x - mean) * mask
    var = total((centered**2).sum()) / (count - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probabilities.
    k1 = log pi - log pi_ref (unbiased, can be negative); k3 = (r - 1) - log r with
    r = pi_ref / pi (unbiased, never negative, lower variance; Schulman 2020)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"ppo.kl_estimator={estimator!r}: choose k1 or k3")


def token_rewards(kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = -beta * KL_t on every response token, plus the sequence's score on its last one."""
    rewards = -beta * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards


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


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float):
    """Clipped surrogate objective (as a loss), with its clip fraction and approx-KL (k3 of the
    update's ratio) for monitoring."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return loss, clip_fraction, approx_kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip: float):
    """0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2), and the clip fraction."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clip_fraction


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits), without keeping a log-softmax tensor around."""
    logz = torch.logsumexp(logits, dim=-1)
    return logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R]: 1 is a perfect critic, <= 0 no better than a constant."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return 1 - var_residual / var_returns.clamp(min=1e-8)


class KLController:
    """beta, fixed (InstructGPT: 0.02) or adaptive (Ziegler et al. 2019):
    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_episodes / horizon)."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10000):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_episodes: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_episodes / self.horizon

    def state_dict(self) -> dict:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.target, self.horizon = state["beta"], state["target"], state["horizon"]
