"""The critic-free advantage estimators (GRPO, RLOO, REINFORCE++) against naive loops on
hand-made tensors, and a critic-free update with the KL in the loss."""

import dataclasses
import statistics

import pytest
import torch

from rlhf.algos.advantages import ADVANTAGES, AdvantageInput, group_stats, needs_critic, needs_groups
from rlhf.config import ConfigError, PPOStageConfig, RLHFConfig
from rlhf.checks import check
from rlhf.core.ops import masked_whiten

LENGTHS = [3, 1, 4, 2, 4, 3]
GROUPS = [7, 7, 7, 2, 2, 2]  # two prompts, three responses each (ids need not be 0..n)


def batch(seed=0, groups=GROUPS, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.float64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    rewards = torch.randn(mask.shape, generator=g, dtype=torch.float64) * mask
    scores = torch.randn(len(lengths), generator=g, dtype=torch.float64)
    return AdvantageInput(rewards=rewards, scores=scores, values=None, mask=mask, groups=torch.tensor(groups),
                          total=lambda t: t)


def members(i, groups=GROUPS):
    return [j for j, g in enumerate(groups) if g == groups[i]]


def test_group_stats_match_a_naive_loop():
    x = batch()
    mean, std, count = group_stats(x.scores, x.groups)
    for i in range(len(GROUPS)):
        values = [x.scores[j].item() for j in members(i)]
        assert mean[i].item() == pytest.approx(statistics.mean(values))
        assert std[i].item() == pytest.approx(statistics.stdev(values))
        assert count[i].item() == len(values)


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_grpo_is_the_reward_against_its_group(scale_by_std):
    x = batch()
    advantages, returns = ADVANTAGES["grpo"](x, PPOStageConfig(scale_by_std=scale_by_std))
    assert returns is None and not needs_critic("grpo")
    for i, n in enumerate(LENGTHS):
        totals = [x.rewards[j].sum().item() for j in members(i)]
        expected = x.rewards[i].sum().item() - statistics.mean(totals)
        if scale_by_std:
            expected /= statistics.stdev(totals) + 1e-4
        assert advantages[i, :n].tolist() == pytest.approx([expected] * n)
        assert (advantages[i, n:] == 0).all()


def test_rloo_baseline_is_the_mean_of_the_others():
    x = batch(1)
    advantages, returns = ADVANTAGES["rloo"](x, PPOStageConfig())
    assert returns is None
    for i, n in enumerate(LENGTHS):
        others = [x.rewards[j].sum().item() for j in members(i) if j != i]
        expected = x.rewards[i].sum().item() - sum(others) / len(others)
        assert advantages[i, :n].tolist() == pytest.approx([expected] * n)
        assert (advantages[i, n:] == 0).all()


@pytest.mark.parametrize("group_baseline", [False, True])
def test_reinforce_pp_is_whitened_discounted_return(group_baseline):
    x = batch(2)
    gamma = 0.9
    advantages, returns = ADVANTAGES["reinforce_pp"](x, PPOStageConfig(gamma=gamma, group_baseline=group_baseline))
    assert returns is None
    naive = torch.zeros_like(x.rewards)
    for i, n in enumerate(LENGTHS):
        rewards = x.rewards[i, :n].tolist()
        if group_baseline:
            rewards[-1] -= statistics.mean(x.scores[j].item() for j in members(i))
        for t in range(n):
            naive[i, t] = sum(gamma ** (k - t) * rewards[k] for k in range(t, n))
    flat = [naive[i, t].item() for i, n in enumerate(LENGTHS) for t in range(n)]
    mean, std = statistics.mean(flat), statistics.stdev(flat)
    for i, n in enumerate(LENGTHS):
        assert advantages[i, :n].tolist() == pytest.approx([(v - mean) / std for v in naive[i, :n].tolist()], abs=1e-6)
        assert (advantages[i, n:] == 0).all()


def test_reinforce_pp_normalises_with_the_sums_of_every_rank():
    """The whitening takes its sums through `total` (the loop passes distributed.sum_over_ranks;
    that masked_whiten over two ranks equals whitening the whole batch is tested in
    test_distributed_units.py)."""
    from rlhf.algos.advantages import gae

    x = batch(3)
    calls = []
    x.total = lambda t: calls.append(t) or t * 2  # as if a second rank held the same sums
    advantages, _ = ADVANTAGES["reinforce_pp"](x, PPOStageConfig())
    returns = gae(x.rewards, torch.zeros_like(x.rewards), x.mask, 1.0, 1.0)[0]
    assert len(calls) == 3  # count, sum, sum of squares
    assert torch.allclose(advantages, masked_whiten(returns, x.mask, total=lambda t: t * 2))
    assert not torch.allclose(advantages, masked_whiten(returns, x.mask))


def test_group_estimators_need_groups():
    for name in ("grpo", "rloo"):
        with pytest.raises(ConfigError, match=f"ppo.advantage={name} compares the responses to one prompt"):
            check(RLHFConfig(ppo=PPOStageConfig(advantage=name, samples_per_prompt=1)))
    with pytest.raises(ConfigError, match="ppo.group_baseline=true compares"):
        check(RLHFConfig(ppo=PPOStageConfig(advantage="reinforce_pp", group_baseline=True)))
    check(RLHFConfig(ppo=PPOStageConfig(advantage="grpo", samples_per_prompt=4)))


def test_a_critic_free_update_with_the_kl_in_the_loss(tokenizer):
    from rlhf.data import encode_prompts
    from rlhf.stages.online_rl.rollout import rollout
    from rlhf.stages.online_rl.update import update
    from tests.conftest import tiny_roles, trainable

    p = PPOStageConfig(advantage="grpo", samples_per_prompt=3, rollout_batch_size=6, mini_batch_size=6,
                       kl_in_reward=False, kl_loss_coef=0.5, kl_estimator="k3", ppo_epochs=2, learning_rate=1e-2)
    roles = tiny_roles(tokenizer)
    policy = roles.policy
    prompts = ["sort ascending: 3 1 2"] * 3 + ["sort descending: 5 9 1"] * 3
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, max_new_tokens=4,
                groups=torch.tensor([0, 0, 0, 1, 1, 1]))
    # scored as ended (few tiny answers emit EOS, and the unfinished all get no_eos_score): the
    # groups' scores then differ, so the update has something to learn from
    r = dataclasses.replace(r, ended=torch.ones_like(r.ended))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    stats = update(trainable(roles, p, lr=1e-2), r, p, beta=0.3)
    assert r.values is None and "value_loss" not in stats and "explained_variance" not in stats
    assert stats["kl_loss"] >= 0  # k3 is never negative; in the second epoch the policy has moved
    assert stats["non_score_reward"] == 0.0  # the KL is in the loss, not the reward
    changed = [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
    assert changed


def test_a_negative_entropy_coefficient_lowers_the_policys_entropy(tokenizer):
    """ppo.entropy_coef < 0 is entropy minimisation: with advantages of zero (every score
    equal), the only gradient is the entropy term's, and the policy's entropy falls."""
    from rlhf.data import encode_prompts
    from rlhf.sampling import FunctionReward
    from rlhf.stages.online_rl.rollout import rollout
    from rlhf.stages.online_rl.update import update
    from tests.conftest import tiny_roles, trainable

    prompts = ["sort ascending: 3 1 2", "sort descending: 5 9 1"] * 4
    entropies = {}
    for coef in (0.0, -0.5):
        p = PPOStageConfig(advantage="grpo", samples_per_prompt=2, rollout_batch_size=8, mini_batch_size=8,
                           kl_in_reward=False, ppo_epochs=4, entropy_coef=coef, no_eos_score=0.0)
        roles = tiny_roles(tokenizer, FunctionReward("rlhf.data.toy:gold_score"))
        roles.reward.score_texts = lambda ps, rs: torch.zeros(len(rs))  # one score for all: no advantage
        r = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, max_new_tokens=4, prompts=prompts,
                    groups=torch.arange(4).repeat_interleave(2))
        update(trainable(roles, p, lr=1e-2), r, p, beta=0.0)
        after = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, max_new_tokens=4, prompts=prompts,
                        groups=torch.arange(4).repeat_interleave(2))
        entropies[coef] = (after.entropy.sum() / after.mask.sum()).item()
    assert entropies[-0.5] < entropies[0.0] - 0.1, entropies


def test_only_gae_trains_a_critic_and_only_group_estimators_need_groups():
    assert [needs_critic(n) for n in ("gae", "grpo", "rloo", "reinforce_pp")] == [True, False, False, False]
    assert [needs_groups(n) for n in ("gae", "grpo", "rloo", "reinforce_pp")] == [False, True, True, False]
