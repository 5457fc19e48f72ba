"""KL to the reference policy: per-token estimators and the coefficient that weighs them."""

from __future__ import annotations

import torch

from rlhf.algos.registry import Registry

# (logprobs, ref_logprobs) of the sampled tokens -> per-token estimate of KL(pi || pi_ref)
KL_ESTIMATORS = Registry("ppo.kl_estimator")


@KL_ESTIMATORS.register("k1")
def k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """log pi - log pi_ref: unbiased, can be negative (Schulman 2020)."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k3")
def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(r - 1) - log r with r = pi_ref / pi: unbiased, never negative, lower variance."""
    log_ratio = logprobs - ref_logprobs
    return torch.expm1(-log_ratio) + log_ratio


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    return KL_ESTIMATORS[estimator](logprobs, ref_logprobs)


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
