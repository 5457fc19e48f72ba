"""Stage 3's pure functions (rlhf/algos/, rlhf/core/ops.py) against naive per-element loops on
random tensors."""

import math

import pytest
import torch

from rlhf.algos.advantages import gae
from rlhf.algos.critic import explained_variance, value_loss
from rlhf.algos.kl import KLController, kl_per_token
from rlhf.algos.policy_loss import clipped_surrogate
from rlhf.algos.rewards import token_rewards
from rlhf.config import ConfigError
from rlhf.core.ops import entropy_from_logits, masked_mean, masked_whiten


def policy_loss(logprobs, old_logprobs, advantages, mask, clip):
    losses, stats = clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip)
    return masked_mean(losses, mask), stats["policy_clipfrac"], stats["approx_kl"]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 3, 7]  # response tokens up to and including EOS
    mask = torch.zeros(4, 7)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    rand = lambda: torch.randn(4, 7, generator=g, dtype=torch.float64)  # noqa: E731
    return {"mask": mask.double(), "lengths": lengths, "a": rand(), "b": rand(), "c": rand(), "d": rand()}


def valid(x, mask):
    return [x[i, j].item() for i in range(x.shape[0]) for j in range(x.shape[1]) if mask[i, j]]


def test_masked_mean_and_whiten(batch):
    x, mask = batch["a"], batch["mask"]
    values = valid(x, mask)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    assert masked_mean(x, mask).item() == pytest.approx(mean)
    whitened = masked_whiten(x, mask)
    assert valid(whitened, mask) == pytest.approx([(v - mean) / std for v in values], rel=1e-6)
    assert whitened[mask == 0].abs().sum() == 0
    kept = masked_whiten(x, mask, shift_mean=False)
    assert valid(kept, mask) == pytest.approx([(v - mean) / std + mean for v in values], rel=1e-6)


def test_kl_estimators(batch):
    logp, ref = batch["a"], batch["b"]
    for i in range(4):
        for j in range(7):
            log_r = ref[i, j].item() - logp[i, j].item()  # r = pi_ref / pi
            assert kl_per_token(logp, ref, "k1")[i, j].item() == pytest.approx(-log_r)
            assert kl_per_token(logp, ref, "k3")[i, j].item() == pytest.approx(math.exp(log_r) - 1 - log_r)
    assert (kl_per_token(logp, ref, "k3") >= 0).all()
    with pytest.raises(ConfigError, match="ppo.kl_estimator=.k2.: choose one of k1, k3"):
        kl_per_token(logp, ref, "k2")


def test_token_rewards_put_the_score_on_the_last_response_token(batch):
    kl, mask = batch["a"], batch["mask"]
    scores = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    rewards = token_rewards(kl, scores, mask, beta=0.1)
    for i, n in enumerate(batch["lengths"]):
        for j in range(7):
            expected = (-0.1 * kl[i, j].item() if j < n else 0.0) + (scores[i].item() if j == n - 1 else 0.0)
            assert rewards[i, j].item() == pytest.approx(expected)


def test_gae_matches_a_naive_loop(batch):
    rewards, values, mask = batch["a"], batch["b"], batch["mask"]
    gamma, lam = 0.9, 0.95
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for i, n in enumerate(batch["lengths"]):
        for t in range(7):
            if t >= n:
                assert advantages[i, t] == 0 and returns[i, t] == 0
                continue
            # A_t = sum_l (gamma*lam)^l delta_{t+l}, delta_k = r_k + gamma V_{k+1} - V_k, V_n = 0
            expected = 0.0
            for k in range(t, n):
                v_next = values[i, k + 1].item() if k + 1 < n else 0.0
                delta = rewards[i, k].item() + gamma * v_next - values[i, k].item()
                expected += (gamma * lam) ** (k - t) * delta
            assert advantages[i, t].item() == pytest.approx(expected)
            assert returns[i, t].item() == pytest.approx(expected + values[i, t].item())


def test_gae_with_gamma_1_lambda_1_is_reward_to_go_minus_value(batch):
    rewards, values, mask = batch["a"], batch["b"], batch["mask"]
    advantages, _ = gae(rewards, values, mask, 1.0, 1.0)
    i, n = 0, batch["lengths"][0]
    for t in range(n):
        assert advantages[i, t].item() == pytest.approx(rewards[i, t:n].sum().item() - values[i, t].item())


def test_clipped_policy_loss(batch):
    new, old, adv, mask = batch["a"] * 0.3, batch["b"] * 0.3, batch["c"], batch["mask"]
    loss, clip_fraction, approx_kl = policy_loss(new, old, adv, mask, clip=0.2)
    terms, clipped, kls = [], [], []
    for i in range(4):
        for j in range(7):
            if not mask[i, j]:
                continue
            ratio = math.exp(new[i, j].item() - old[i, j].item())
            a = adv[i, j].item()
            surrogate = min(ratio * a, min(max(ratio, 0.8), 1.2) * a)
            terms.append(-surrogate)
            clipped.append(float(-min(max(ratio, 0.8), 1.2) * a > -ratio * a))
            kls.append((ratio - 1) - math.log(ratio))
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert clip_fraction.item() == pytest.approx(sum(clipped) / len(clipped))
    assert approx_kl.item() == pytest.approx(sum(kls) / len(kls))


def test_clipped_value_loss(batch):
    new, old, ret, mask = batch["a"], batch["b"], batch["c"], batch["mask"]
    loss, clip_fraction = value_loss(new, old, ret, mask, clip=0.2)
    terms, clipped = [], []
    for i in range(4):
        for j in range(7):
            if mask[i, j]:
                v, v_old, r = new[i, j].item(), old[i, j].item(), ret[i, j].item()
                v_clip = v_old + min(max(v - v_old, -0.2), 0.2)
                terms.append(0.5 * max((v - r) ** 2, (v_clip - r) ** 2))
                clipped.append(float((v_clip - r) ** 2 > (v - r) ** 2))
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert clip_fraction.item() == pytest.approx(sum(clipped) / len(clipped))


def test_entropy_and_explained_variance(batch):
    logits = batch["a"]
    p = torch.softmax(logits, -1)
    assert torch.allclose(entropy_from_logits(logits), -(p * p.log()).sum(-1))
    mask = batch["mask"]
    ret = batch["b"]
    assert explained_variance(ret, ret, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 3.0), ret, mask).item() == pytest.approx(0.0, abs=1e-9)


def test_adaptive_kl_controller_follows_ziegler():
    fixed = KLController(0.02)
    fixed.update(100.0, 64)
    assert fixed.beta == 0.02
    ctl = KLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, 64)  # KL above target: error 0.5, clipped to 0.2
    assert ctl.beta == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    ctl.update(5.4, 64)  # below: error -0.1
    assert ctl.beta == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000) * (1 - 0.1 * 64 / 10000))
    before = ctl.beta
    ctl.update(0.6, 64)  # far below: error -0.9, clipped to -0.2
    assert ctl.beta == pytest.approx(before * (1 - 0.2 * 64 / 10000))
    restored = KLController(1.0)
    restored.load_state_dict(ctl.state_dict())
    assert restored.beta == ctl.beta and restored.target == 6.0


def test_truncated_is_weights_and_the_mismatch_stats_match_a_loop():
    from rlhf.algos.policy_loss import logprob_mismatch, truncated_is_weights

    torch.manual_seed(0)
    logprobs, engine = -torch.rand(3, 5) * 3, -torch.rand(3, 5) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).float()
    weights = truncated_is_weights(logprobs, engine, cap=1.5)
    abs_sum = k3_sum = largest = 0.0
    for i in range(3):
        for t in range(5):
            ratio = math.exp(logprobs[i, t] - engine[i, t])
            assert weights[i, t].item() == pytest.approx(min(ratio, 1.5), rel=1e-5)
            if mask[i, t]:
                diff = (logprobs[i, t] - engine[i, t]).item()
                abs_sum += abs(diff)
                k3_sum += ratio - 1 - diff
                largest = max(largest, abs(diff))
    stats = logprob_mismatch(logprobs, engine, mask)
    assert stats["engine_logprob_abs_diff"] == pytest.approx(abs_sum / mask.sum().item(), rel=1e-5)
    assert stats["engine_kl_per_token"] == pytest.approx(k3_sum / mask.sum().item(), rel=1e-5)
    assert stats["engine_logprob_max_abs_diff"] == pytest.approx(largest, rel=1e-5)
    assert (weights <= 1.5).all() and (weights < 1.5).any()


def test_shaped_scores_are_clipped_both_ways_and_unfinished_answers_get_the_fixed_score():
    from rlhf.algos.rewards import shape_scores

    scores = torch.tensor([-7.0, -0.5, 0.5, 9.0, 9.0])
    ended = torch.tensor([True, True, True, True, False])
    assert shape_scores(scores, ended, clip=2.0, no_eos_score=-5.0).tolist() == [-2.0, -0.5, 0.5, 2.0, -5.0]
    assert shape_scores(scores, ended, clip=None, no_eos_score=-5.0).tolist() == [-7.0, -0.5, 0.5, 9.0, -5.0]
