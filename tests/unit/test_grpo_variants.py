"""The GRPO variants' pieces against naive loops: the loss aggregations (PPO/DAPO's token mean,
GRPO's mean of means, Dr. GRPO's token sum over a constant) summed over micro-batches as stage 3
sums them, DAPO's clip-higher, overlong penalty and uniform groups, GSPO's sequence ratio; and
each variant's config file through one real update."""

import dataclasses
import math

import pytest
import torch
import yaml

from rlhf.algos.policy_loss import LOSS_AGGREGATIONS, POLICY_LOSSES, aggregate
from rlhf.algos.rewards import overlong_penalty, uniform_groups
from rlhf.config import ConfigError, PPOStageConfig, RLHFConfig
from rlhf.checks import check
from tests.conftest import ROOT

LENGTHS = [3, 1, 4, 2, 4, 3]


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.float64)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
    rand = lambda scale=1.0: torch.randn(mask.shape, generator=g, dtype=torch.float64) * scale  # noqa: E731
    return mask, rand


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
@pytest.mark.parametrize("splits", [[6], [2, 4], [1, 2, 3]])
def test_each_aggregation_summed_over_micro_batches_is_its_formula(mode, splits):
    mask, rand = batch()
    losses = rand() * mask
    horizon = 10
    rows = [[losses[i, t].item() for t in range(LENGTHS[i])] for i in range(len(LENGTHS))]
    naive = {"token_mean": sum(map(sum, rows)) / sum(LENGTHS),
             "seq_mean_token_mean": sum(sum(r) / len(r) for r in rows) / len(rows),
             "seq_mean_token_sum_norm": sum(map(sum, rows)) / (len(rows) * horizon)}[mode]
    tokens = mask.sum()
    total, start = 0.0, 0
    for size in splits:  # as stage 3 weights each micro-batch: its share of the minibatch's tokens
        m, l = mask[start:start + size], losses[start:start + size]
        total += (m.sum() / tokens * aggregate(l, m, mode, rows=len(LENGTHS), tokens=tokens, horizon=horizon)).item()
        start += size
    assert total == pytest.approx(naive, rel=1e-12)


def test_an_unknown_aggregation_is_refused_by_the_config_check():
    with pytest.raises(ConfigError, match="ppo.loss_agg='seq_sum': choose one of token_mean"):
        check(RLHFConfig(ppo=PPOStageConfig(loss_agg="seq_sum")))


@pytest.mark.parametrize("clip_high", [None, 0.28])
def test_ppo_clip_with_a_higher_upper_clip_per_token(clip_high):
    mask, rand = batch(1)
    logprobs, old, adv = rand(0.3), rand(0.3), rand()
    p = PPOStageConfig(clip=0.2, clip_high=clip_high)
    losses, stats = POLICY_LOSSES["ppo_clip"](logprobs, old, adv, mask, p)
    high = 0.2 if clip_high is None else clip_high
    for i in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            ratio = math.exp(logprobs[i, t].item() - old[i, t].item())
            a = adv[i, t].item()
            want = max(-a * ratio, -a * min(max(ratio, 0.8), 1 + high)) if mask[i, t] else 0.0
            assert losses[i, t].item() == pytest.approx(want, abs=1e-12)


def test_gspo_clips_one_length_normalised_ratio_per_response():
    mask, rand = batch(2)
    logprobs, old = rand(1e-3), rand(1e-3)
    adv = torch.tensor([0.5, -1.0, 2.0, 0.0, -0.3, 1.2], dtype=torch.float64)[:, None] * mask
    p = PPOStageConfig(clip=3e-4, clip_high=4e-4)
    losses, stats = POLICY_LOSSES["gspo"](logprobs, old, adv, mask, p)
    clipped = 0
    for i, n in enumerate(LENGTHS):
        s = math.exp(sum(logprobs[i, t].item() - old[i, t].item() for t in range(n)) / n)
        a = adv[i, 0].item()
        want = max(-a * s, -a * min(max(s, 1 - 3e-4), 1 + 4e-4))
        clipped += -a * min(max(s, 1 - 3e-4), 1 + 4e-4) > -a * s
        assert [losses[i, t].item() for t in range(n)] == pytest.approx([want] * n, abs=1e-15)
        assert (losses[i, n:] == 0).all()
    assert stats["policy_clipfrac"].item() == pytest.approx(clipped / len(LENGTHS))
    assert 0 < clipped < len(LENGTHS)  # the draw clips some responses and not others: both paths seen


def test_gspo_moves_the_policy_only_through_each_responses_mean_log_ratio():
    mask, rand = batch(3)
    logprobs = rand(1e-3).requires_grad_()
    adv = torch.ones_like(mask)
    losses, _ = POLICY_LOSSES["gspo"](logprobs, logprobs.detach(), adv, mask, PPOStageConfig(clip=0.2))
    aggregate(losses, mask, "seq_mean_token_mean", rows=6, tokens=mask.sum(), horizon=4).backward()
    # at ratio 1 (on-policy): d/dlogp_t of -mean_i s_i = -1/(G |y_i|) for each of response i's tokens
    want = torch.stack([-mask[i] / (6 * LENGTHS[i]) for i in range(6)])
    assert torch.allclose(logprobs.grad, want, atol=1e-12)


def test_the_overlong_penalty_ramps_over_the_buffer():
    lengths = torch.tensor([5, 12, 13, 14, 16, 20])
    got = overlong_penalty(lengths, max_new_tokens=16, buffer=4, penalty=1.0).tolist()
    assert got == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])  # 12 = 16 - 4: still free
    assert overlong_penalty(torch.tensor([14]), 16, 4, 2.0).item() == pytest.approx(-1.0)


def test_uniform_groups_are_those_whose_scores_are_all_equal():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    groups = torch.tensor([4, 4, 4, 9, 9, 2, 2, 1, 1])
    naive = [len({scores[j].item() for j in range(len(groups)) if groups[j] == groups[i]}) == 1
             for i in range(len(groups))]
    assert uniform_groups(scores, groups).tolist() == naive == [True] * 3 + [False] * 2 + [True] * 4


@pytest.mark.parametrize("algo", ["dr_grpo", "dapo", "gspo"])
def test_each_variant_config_is_checked_and_moves_the_policy_in_one_real_update(algo, tokenizer):
    from rlhf.data import encode_prompts
    from rlhf.stages.online_rl.rollout import rollout
    from rlhf.stages.online_rl.update import update
    from tests.conftest import tiny_roles, trainable

    settings = yaml.safe_load((ROOT / "conf" / "algo" / f"{algo}.yaml").read_text())
    p = PPOStageConfig(**{**settings, "rollout_batch_size": 8, "mini_batch_size": 4, "learning_rate": 1e-2})
    check(RLHFConfig(ppo=p))
    roles = tiny_roles(tokenizer)
    policy = roles.policy
    prompts = ["sort ascending: 3 1 2"] * 4 + ["sort descending: 5 9 1"] * 4
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, max_new_tokens=6,
                groups=torch.tensor([0] * 4 + [1] * 4))
    # scored as ended (few tiny answers emit EOS, and the unfinished all get no_eos_score): the
    # groups' scores then differ, so the update has something to learn from
    r = dataclasses.replace(r, ended=torch.ones_like(r.ended))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    stats = update(trainable(roles, p, lr=1e-2), r, p, 0.0, max_new_tokens=6, pad_id=tokenizer.pad_token_id)
    assert math.isfinite(stats["policy_loss"])
    assert [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
