"""EOS handling in PPO's rollout: the score is read at the EOS, a response without EOS gets the
fixed penalty, and tokens after the EOS take part in no loss."""

import importlib

import pytest
import torch

from rlhf.algos.advantages import gae
from rlhf.algos.kl import kl_per_token
from rlhf.algos.policy_loss import clipped_surrogate
from rlhf.algos.rewards import shape_scores, token_rewards
from rlhf.config import PPOStageConfig
from rlhf.data import encode_prompts
from rlhf.sampling import response_logprobs, sample
from rlhf.stages.online_rl.roles import Roles, local_engine
from rlhf.stages.online_rl.rollout import eos_mask, rollout
from rlhf.stages.online_rl.update import update
from tests.conftest import tiny_roles

# the module (rlhf.sampling's `generate` is the function of that name)
generate_module = importlib.import_module("rlhf.sampling.generate")

PROMPTS = ["sort ascending: 3 1 2", "sort descending: 5 9 1 0", "sort ascending: 7 7"]


def test_eos_mask_keeps_tokens_up_to_the_first_eos():
    eos = 1
    responses = torch.tensor([[5, 6, 1, 7, 1], [5, 5, 5, 5, 5], [1, 8, 8, 8, 8]])
    mask, ended = eos_mask(responses, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


@pytest.fixture
def roles(tokenizer):
    return tiny_roles(tokenizer, critic=True, reward_bias=0.5)


def scores_of(r, roles, p):
    return shape_scores(r.scores, r.ended, clip=p.score_clip,
                        no_eos_score=p.no_eos_score)



def fixed_sample(responses):
    """Replaces sampling by given responses (tokens after EOS are junk, as a batch's are)."""
    def fake(model, input_ids, attention_mask, **kw):
        tokens = torch.tensor(responses)
        return tokens, torch.randn(tokens.shape), torch.rand(tokens.shape)
    return fake


def test_sampling_keeps_the_logprobs_a_full_forward_gives(roles, tokenizer):
    torch.manual_seed(1)
    batch = tokenizer.pad({"input_ids": encode_prompts(tokenizer, PROMPTS)}, padding_side="left", return_tensors="pt")
    tokens, logprobs, entropy = sample(roles.policy, batch["input_ids"], batch["attention_mask"], max_new_tokens=6,
                                       temperature=0.7, eos_id=tokenizer.eos_token_id,
                                       pad_id=tokenizer.pad_token_id)
    mask, _ = eos_mask(tokens, tokenizer.eos_token_id)
    sequences = torch.cat([batch["input_ids"], torch.where(mask.bool(), tokens, tokenizer.pad_token_id)], 1)
    attention = torch.cat([batch["attention_mask"], mask], 1)
    with torch.no_grad():
        again, entropy_again = response_logprobs(roles.policy, sequences, attention, batch["input_ids"].shape[1],
                                                 0.7, with_entropy=True)
    m = mask.bool()
    assert torch.allclose(logprobs[m], again[m], atol=1e-4) and torch.allclose(entropy[m], entropy_again[m], atol=1e-4)
    held_back, _, _ = sample(roles.policy, batch["input_ids"], batch["attention_mask"], max_new_tokens=6,
                             temperature=0.7, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                             min_new_tokens=6)
    assert held_back.shape == (3, 6) and (held_back != tokenizer.eos_token_id).all()


def test_the_in_place_kv_cache_samples_what_transformers_cache_samples(roles, tokenizer, monkeypatch):
    """The sampler's own preallocated cache (rlhf.sampling.generate._InPlaceLayer) against
    transformers' DynamicCache: the same tokens from the same seed, the same log-probs."""
    import importlib

    from transformers import DynamicCache

    generate = importlib.import_module("rlhf.sampling.generate")
    assert {type(layer).__name__ for layer in generate._kv_cache(roles.policy.config, 16).layers} == {"_InPlaceLayer"}
    batch = tokenizer.pad({"input_ids": encode_prompts(tokenizer, PROMPTS)}, padding_side="left", return_tensors="pt")
    outputs = []
    for _ in ("ours", "transformers"):
        torch.manual_seed(5)
        outputs.append(sample(roles.policy, batch["input_ids"], batch["attention_mask"], max_new_tokens=8,
                              temperature=1.0, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id))
        monkeypatch.setattr(generate, "_kv_cache", lambda config, capacity: DynamicCache(config=config))
    (ours, ours_logp, _), (theirs, theirs_logp, _) = outputs
    assert torch.equal(ours, theirs) and ours.shape[1] > 1
    assert torch.allclose(ours_logp, theirs_logp, atol=1e-5)


def test_score_at_eos_penalty_without_eos_and_nothing_after_eos(roles, tokenizer, monkeypatch):
    eos, junk = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("Ġ9")
    digit = tokenizer.convert_tokens_to_ids("Ġ1")
    responses = [[digit, eos, junk, junk, junk],     # ends early: junk after EOS
                 [digit, digit, digit, digit, digit],  # never ends: penalty
                 [digit, digit, digit, eos, junk]]
    monkeypatch.setattr(generate_module, "sample", fixed_sample(responses))
    p = PPOStageConfig(no_eos_score=-7.0)
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, PROMPTS), p, max_new_tokens=5)
    scores = scores_of(r, roles, p)

    assert r.ended.tolist() == [True, False, True]
    assert r.mask.tolist() == [[1, 1, 0, 0, 0], [1] * 5, [1, 1, 1, 1, 0]]
    assert (r.sequences[:, -5:][r.mask == 0] == tokenizer.pad_token_id).all()  # junk replaced by PAD
    assert scores[1].item() == -7.0
    # the score of an ended response is the RM on exactly prompt + response up to its EOS, plus the bias
    for i in (0, 2):
        ids = encode_prompts(tokenizer, [PROMPTS[i]])[0] + responses[i][: int(r.mask[i].sum())]
        with torch.no_grad():
            alone = roles.reward.model(torch.tensor([ids])).logits[0, 0].item()
        assert r.scores[i].item() == pytest.approx(alone + 0.5, abs=1e-4)
        assert scores[i].item() == pytest.approx(alone + 0.5, abs=1e-4)
    # the reference's log-probs match a forward pass on the unpadded sequence
    ids = encode_prompts(tokenizer, [PROMPTS[2]])[0] + responses[2][:4]
    with torch.no_grad():
        logits = roles.ref(torch.tensor([ids])).logits[0, -5:-1].log_softmax(-1)
    expected = logits.gather(-1, torch.tensor(responses[2][:4])[:, None])[:, 0]
    assert torch.allclose(r.ref_logprobs[2, :4], expected, atol=1e-4)
    assert (r.logprobs[r.mask == 0] == 0).all() and (r.entropy[r.mask == 0] == 0).all()

    # tokens after EOS carry no reward, advantage, or loss
    kl = kl_per_token(r.logprobs, r.ref_logprobs) * r.mask
    rewards = token_rewards(kl, scores, r.mask, beta=0.1)
    advantages, returns = gae(rewards, r.values, r.mask, 1.0, 0.95)
    for t in (rewards, advantages, returns, r.values):
        assert (t[r.mask == 0] == 0).all()
    assert rewards[0, 1].item() == pytest.approx(-0.1 * kl[0, 1].item() + scores[0].item())
    garbled = r.logprobs.clone()
    garbled[r.mask == 0] = 123.0
    a = clipped_surrogate(r.logprobs, r.logprobs.detach(), advantages, r.mask, 0.2)[0]
    b = clipped_surrogate(garbled, r.logprobs.detach() * r.mask + garbled * (1 - r.mask), advantages, r.mask, 0.2)[0]
    assert torch.equal(a, b) and a[r.mask == 0].abs().sum() == 0  # per-token losses, nothing off the mask


def test_an_update_changes_policy_and_value(roles, tokenizer):
    p = PPOStageConfig(rollout_batch_size=3, mini_batch_size=3, ppo_epochs=1, learning_rate=1e-3, max_new_tokens=4)
    before = {k: v.clone() for k, v in roles.policy.state_dict().items()}
    value_before = roles.critic.score.weight.clone()
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, PROMPTS), p, max_new_tokens=4)
    roles.policy = local_engine(roles.policy, torch.optim.AdamW(roles.policy.parameters(), lr=1e-3), p)
    roles.critic = local_engine(roles.critic, torch.optim.AdamW(roles.critic.parameters(), lr=1e-3), p)
    stats = update(roles, r, p, 0.05)
    assert {"policy_loss", "value_loss", "kl", "score", "eos_rate", "entropy", "policy_clipfrac",
            "explained_variance"} <= set(stats)
    changed = [k for k, v in roles.policy.module.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and not torch.equal(roles.critic.module.score.weight, value_before)
    # the frozen reference is untouched
    assert all(not p.requires_grad or p.grad is None for p in roles.ref.parameters())


def test_micro_batches_give_the_same_update_as_one_pass(roles, tokenizer, monkeypatch):
    """Gradient accumulation over micro-batches weighted by response tokens = one minibatch pass."""
    import copy

    prompts = PROMPTS + ["sort descending: 1 2", "sort ascending: 9 8 7 6"] * 2 + ["sort ascending: 0 4 2"]
    eos, digit = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("Ġ1")
    # unequal response lengths, so that weighting micro-batches by tokens matters
    monkeypatch.setattr(generate_module, "sample", fixed_sample([[digit] * n + [eos] * (5 - n) for n in (0, 1, 4, 2, 5, 3, 1, 4)]))
    p = PPOStageConfig(rollout_batch_size=8, mini_batch_size=8, ppo_epochs=1, learning_rate=1e-3, max_new_tokens=5)
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, max_new_tokens=5)
    assert len(set(r.mask.sum(1).tolist())) > 1
    after = []
    for micro in (None, 2):
        twin = Roles(**{k: copy.deepcopy(getattr(roles, k)) for k in ("policy", "ref", "reward", "critic")})
        p.micro_batch_size = micro
        twin.policy = local_engine(twin.policy, torch.optim.SGD(twin.policy.parameters(), lr=1.0), p)
        twin.critic = local_engine(twin.critic, torch.optim.SGD(twin.critic.parameters(), lr=1.0), p)
        torch.manual_seed(3)
        update(twin, r, p, 0.05)
        after.append((twin.policy.module.state_dict(), twin.critic.module.state_dict()))
    for whole, split in zip(after[0], after[1]):
        for k in whole:
            assert torch.allclose(whole[k], split[k], atol=1e-5), k
    assert not torch.equal(after[0][0]["lm_head.weight"], roles.policy.state_dict()["lm_head.weight"])


def test_draw_samples_each_token_at_its_probability_and_never_a_masked_one():
    from rlhf.sampling.generate import _draw

    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, float("-inf"), 2.0, -1.0]]).expand(40000, 5)
    drawn = _draw(torch.log_softmax(logits, -1), torch.rand(len(logits), 1))
    freq = torch.bincount(drawn, minlength=5).float() / len(drawn)
    expected = torch.softmax(logits[0], -1)
    assert freq[2] == 0
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)
