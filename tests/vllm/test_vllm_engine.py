"""The vLLM rollout engine (rlhf/sampling/vllm_engine.py): weights pushed from the policy in
place (full and LoRA), sampling as our own sampler samples, and stage 3's rollout on it.
Needs vLLM (`make test-vllm` runs these in .venv-vllm); skipped, and counted, without it."""

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm")

from rlhf.config import LoraConfig, ModelConfig, PPOStageConfig, VLLMConfig  # noqa: E402
from rlhf.data import encode_prompts  # noqa: E402
from rlhf.models import apply_lora, build_tiny_model  # noqa: E402
from rlhf.sampling import response_logprobs  # noqa: E402
from rlhf.sampling.vllm_engine import VLLMEngine, merged_weights  # noqa: E402
from rlhf.stages.online_rl.roles import Roles  # noqa: E402
from rlhf.stages.online_rl.rollout import rollout  # noqa: E402

pytestmark = pytest.mark.timeout(600)  # the module's first test starts a vLLM engine

PROMPTS = ["sort ascending: 3 1 2", "sort descending: 5 9 1 0", "sort ascending: 7 7", "sort descending: 4 2"]
TOLERANCE = 1e-4  # float32 on both sides; measured ~2e-6


def policy_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    return build_tiny_model(ModelConfig(), tokenizer)


@pytest.fixture(scope="module")
def engine(tokenizer):
    return VLLMEngine(policy_model(tokenizer), tokenizer, VLLMConfig(kv_cache_mib=128), max_model_len=64, dtype="float32",
                      seed=0)


def sequences(tokenizer):
    """Fixed token sequences: each prompt followed by a few tokens of its own."""
    return [ids + ids[:5] for ids in encode_prompts(tokenizer, PROMPTS)]


def policy_logprobs(model, seqs) -> list[torch.Tensor]:
    with torch.no_grad():
        return [response_logprobs(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long), 1, 1.0)[0][0]
                for s in seqs]


def largest_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def lm_step(model, seqs, lr=3e-3):
    """One Adam step on the LM loss of `seqs`: an update that moves every log-prob a little."""
    optimizer = torch.optim.Adam([w for w in model.parameters() if w.requires_grad], lr=lr)
    batch = torch.tensor([s[:8] for s in seqs])
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()


def test_after_an_update_the_engine_scores_fixed_sequences_as_the_updated_policy_does(engine, tokenizer):
    policy, seqs = policy_model(tokenizer, seed=1), sequences(tokenizer)
    engine.sync(policy)
    before = engine.sequence_logprobs(seqs)
    assert largest_difference(before, policy_logprobs(policy, seqs)) < TOLERANCE

    lm_step(policy, seqs)
    assert largest_difference(engine.sequence_logprobs(seqs), before) < TOLERANCE  # nothing pushed yet
    engine.sync(policy)
    after = engine.sequence_logprobs(seqs)
    assert largest_difference(after, policy_logprobs(policy, seqs)) < TOLERANCE
    assert largest_difference(after, before) > 1e-2


def test_a_lora_policy_is_pushed_with_its_adapters_merged_and_stays_unmerged(engine, tokenizer):
    base = policy_model(tokenizer, seed=2)
    policy = apply_lora(base, LoraConfig(enabled=True, r=4, alpha=8), "CAUSAL_LM")
    seqs = sequences(tokenizer)
    lm_step(policy, seqs, lr=3e-2)  # the adapters move (lora_B starts at zero)
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    with policy.disable_adapter():
        base_side = policy_logprobs(policy, seqs)
    adapted = policy_logprobs(policy, seqs)
    assert largest_difference(adapted, base_side) > 1e-2

    engine.sync(policy)
    assert largest_difference(engine.sequence_logprobs(seqs), adapted) < TOLERANCE
    names = dict(merged_weights(policy))
    assert not any("lora_" in n or "base_layer" in n for n in names)
    assert all(torch.equal(v, state[k]) for k, v in policy.state_dict().items())  # nothing merged in place


def test_sampling_follows_our_semantics_seeds_eos_and_min_new_tokens(engine, tokenizer):
    policy = policy_model(tokenizer, seed=3)
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # make EOS likely at about half the positions (its logit, tied: its embedding row)
        policy.get_input_embeddings().weight[eos] *= 30
    engine.sync(policy)
    prompt = encode_prompts(tokenizer, PROMPTS[:1])[0]
    kw = dict(max_new_tokens=8, temperature=1.0)
    s = engine.sample([prompt], 6, seeds=[7, 7, 1, 2, 3, 4], **kw)
    responses, logprobs = s.responses, s.logprobs
    assert not s.by_policy and s.prompt_ids.tolist() == [prompt] * 6  # n answers to a prompt, in consecutive rows
    assert torch.equal(responses[0], responses[1])  # a seed decides a response
    assert len({tuple(r.tolist()) for r in responses[1:]}) > 1
    ended = (responses == eos).any(1)
    assert ended.any(), "EOS is likely at every other step: some response must have ended"
    for row, lp in zip(responses, logprobs):
        if (row == eos).any():
            first = (row == eos).nonzero()[0].item()
            assert (row[first + 1:] == tokenizer.pad_token_id).all() and (lp[first + 1:] == 0).all()
            assert lp[first] < 0  # the EOS itself is kept, with its log-prob
    held = engine.sample([prompt] * 6, seeds=range(6), min_new_tokens=4, **kw).responses
    assert not (held[:, :4] == eos).any()


def test_samples_come_from_the_policys_distribution_at_the_temperature(engine, tokenizer):
    """Pure sampling at T: the engine's log-prob of each sampled token is the policy's at T, and
    their mean is minus the policy's entropy at T (top-k or top-p would raise it)."""
    policy, temperature, n = policy_model(tokenizer, seed=4), 0.7, 1500
    engine.sync(policy)
    prompt = encode_prompts(tokenizer, PROMPTS[1:2])[0]
    s = engine.sample([prompt], n, max_new_tokens=1, temperature=temperature, seeds=range(n))
    tokens, engine_side = s.responses, s.logprobs
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([prompt])).logits[0, -1] / temperature
    logp = torch.log_softmax(logits, -1)
    assert (engine_side[:, 0] - logp[tokens[:, 0]]).abs().max() < TOLERANCE
    entropy = -(logp.exp() * logp).sum()
    sampled = logp[tokens[:, 0]]
    assert abs(sampled.mean() + entropy) < 4 * sampled.std() / n ** 0.5


def test_a_rollout_on_the_engine_takes_its_logprobs_from_the_policy(engine, tokenizer):
    policy, ref = policy_model(tokenizer, seed=5), policy_model(tokenizer, seed=6)
    engine.sync(policy)

    class Constant:  # a reward function's interface: scores from the decoded texts
        def score_sequences(self, sequences, attention_mask, prompts, texts, rows, *layout):
            return torch.ones(len(sequences))

    roles = Roles(policy=policy, ref=ref, reward=Constant())
    p = PPOStageConfig(rollout_batch_size=8, mini_batch_size=8, temperature=0.9, advantage="grpo", samples_per_prompt=2)
    prompts = [q for q in PROMPTS for _ in range(2)]
    torch.manual_seed(0)
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, 6, prompts=prompts, sampler=engine)
    assert r.engine_logprobs is not None and r.engine_logprobs.shape == r.logprobs.shape
    expected, _ = response_logprobs(policy, r.sequences, r.attention_mask, r.prompt_len, p.temperature)
    assert torch.allclose(r.logprobs, expected * r.mask, atol=1e-6)
    assert ((r.logprobs - r.engine_logprobs).abs() * r.mask).max() < TOLERANCE
    assert (r.engine_logprobs * (1 - r.mask) == 0).all() and r.entropy.abs().sum() > 0
    torch.manual_seed(0)  # the same generator state draws the same seeds, so the same responses
    again = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, 6, prompts=prompts, sampler=engine)
    assert torch.equal(again.sequences, r.sequences)
