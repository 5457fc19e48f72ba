"""Stage 3 doing less work with the same results: one prefill per group, finished answers out of
the decoding batch, passes that skip shared prompts and padding (rlhf/sampling/prefix.py)."""

import functools

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from rlhf.core.ops import positions
from rlhf.sampling.generate import _draw, response_logprobs, sample
from rlhf.sampling import prefix
from rlhf.sampling.prefix import length_sorted, prompt_once, run_length, used_columns
from rlhf.sampling.reward import ModelReward
from rlhf.stages.online_rl.rollout import token_values
from rlhf.stages.online_rl.update import shuffled

EOS, PAD, V = 1, 0, 40


@pytest.fixture(autouse=True)
def always_shared(monkeypatch):
    """Prompts read once however small their share of the pass, so these small rows test it."""
    monkeypatch.setattr(prefix, "SHARE_MIN", 0.0)


def config(**kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, pad_token_id=PAD, eos_token_id=EOS, **kw)


def model(cls=LlamaForCausalLM, **kw):
    torch.manual_seed(0)
    return cls(config(**kw)).double().eval()


def grouped_rows(n: int = 3, prompt_len: int = 7, response_len: int = 6, extra_pad: int = 2):
    """Three prompts of different lengths, n answers each of different lengths, left-padded
    prompts then right-padded answers; `extra_pad` columns of padding no row uses on both sides."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, V, (k,), generator=g).tolist() for k in (3, prompt_len, 5)]
    width = extra_pad + prompt_len
    seq = torch.full((3 * n, width + response_len + extra_pad), PAD)
    att = torch.zeros_like(seq)
    for i in range(3 * n):
        q = prompts[i // n]
        answer = torch.randint(2, V, (1 + (i * 5) % response_len,), generator=g).tolist()
        answer[-1] = EOS if i % 2 else answer[-1]
        seq[i, width - len(q):width], att[i, width - len(q):width] = torch.tensor(q), 1
        seq[i, width:width + len(answer)], att[i, width:width + len(answer)] = torch.tensor(answer), 1
    return seq, att, width


def one_pass_logprobs(m, seq, att, prompt_len, temperature=1.0):
    """The naive computation: every row's full sequence in one forward pass."""
    logits = m(input_ids=seq, attention_mask=att, position_ids=positions(att)).logits[:, prompt_len - 1:-1] / temperature
    return logits.log_softmax(-1).gather(-1, seq[:, prompt_len:, None]).squeeze(-1) * att[:, prompt_len:]


def test_run_length_finds_groups_of_equal_rows_and_nothing_else():
    assert run_length([[1], [1], [2], [2]]) == 2
    assert run_length([7, 7, 7, 8, 8, 8]) == 3
    assert run_length([1, 2, 3]) == 1
    assert run_length([1, 1, 2]) == 1  # unequal runs
    assert run_length([1, 1, 2, 2, 2]) == 1
    assert run_length([1, 1, 2, 3]) == 1
    assert run_length([5, 5, 5, 5]) == 4
    assert run_length([]) == 1


def test_used_columns_skip_padding_every_row_has():
    att = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0]])
    assert used_columns(att, prompt_len=4) == (2, 6)


def test_length_sorted_keeps_groups_together_shortest_first():
    order = length_sorted(torch.tensor([5, 1, 2, 2, 9, 0]), n=2)
    assert order.tolist() == [2, 3, 0, 1, 4, 5]  # groups' longest: 5, 2, 9


def test_shuffled_keeps_each_group_whole_and_in_order():
    torch.manual_seed(0)
    order = shuffled(12, 3).tolist()
    assert sorted(order) == list(range(12))
    assert all(order[i + 1] == order[i] + 1 for i in range(0, 12, 3) for i in (i, i + 1))
    torch.manual_seed(0)
    plain = torch.randperm(12).tolist()
    torch.manual_seed(0)
    assert shuffled(12, 1).tolist() == plain  # one row a group: the order as before


@pytest.mark.parametrize("n", [1, 3])
def test_log_probs_with_the_prompt_read_once_equal_one_pass(n):
    m = model()
    seq, att, p = grouped_rows(n)
    with torch.no_grad():
        got, _ = response_logprobs(m, seq, att, p, 1.0, n=n)
    assert torch.allclose(got * att[:, p:], one_pass_logprobs(m, seq, att, p), atol=1e-12)


def test_gradients_with_the_prompt_read_once_equal_one_pass():
    seq, att, p = grouped_rows(3)
    grads = []
    for shared in (False, True):
        m = model().train()
        m.zero_grad()
        logprobs = (response_logprobs(m, seq, att, p, 0.7, n=3)[0] * att[:, p:] if shared
                    else one_pass_logprobs(m, seq, att, p, 0.7))
        (logprobs * torch.linspace(-1, 1, logprobs.shape[1])).sum().backward()
        grads.append({k: v.grad.clone() for k, v in m.named_parameters()})
    # to 1e-6 of the largest: Llama's RMSNorm computes in float32 even in a float64 model, and the
    # shared prompt sums its rows' gradients before the norm's backward, not after
    scale = max(g.abs().max() for g in grads[0].values())
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6 * scale, rtol=0), k


def test_the_critic_and_the_reward_model_read_each_prompt_once_with_the_same_values():
    seq, att, p = grouped_rows(3)
    critic = model(LlamaForSequenceClassification, num_labels=1)
    with torch.no_grad():
        hidden = critic.model(input_ids=seq, attention_mask=att, position_ids=positions(att)).last_hidden_state
        expected = (critic.score(hidden[:, p - 1:-1]).squeeze(-1) * att[:, p:]).float()
        assert torch.allclose(token_values(critic, seq, att, p, n=3) * att[:, p:], expected, atol=1e-6)
        rm = ModelReward(critic, None, "rm")
        plain = critic(input_ids=seq, attention_mask=att, position_ids=positions(att)).logits[:, 0].float()
        assert torch.allclose(rm.score_sequences(seq, att, None, None, 9, prompt_len=p, n=3), plain, atol=1e-6)
        assert torch.allclose(rm.score_sequences(seq, att, None, None, 4), plain, atol=1e-6)


def test_prompt_once_without_shared_prompts_reads_each_row():
    seq, att, p = grouped_rows(3)
    m = model()
    seq[1, :p], att[1, :p] = seq[3, :p], att[3, :p]  # the first group's prompts now differ
    with torch.no_grad():
        out = prompt_once(m, seq, att, p, n=3)[:, :-1]
        expected = m(input_ids=seq, attention_mask=att, position_ids=positions(att)).logits[:, p - 1:-1]
    used = out.shape[1]  # the columns past the last one any row uses are left out
    assert used < expected.shape[1] and not att[:, p + used:].any()
    assert torch.allclose(out * att[:, p:p + used, None], expected[:, :used] * att[:, p:p + used, None], atol=1e-12)


@pytest.mark.parametrize("prompt_len,ranks,calls", [(7, 1, 1), (40, 1, 2), (40, 2, 1)])
def test_a_prompt_is_read_once_only_when_it_is_a_large_share_of_the_pass_on_one_rank(monkeypatch, prompt_len,
                                                                                      ranks, calls):
    """(With several ranks every pass is one call: under ZeRO-3 each forward is a collective.)"""
    monkeypatch.setattr(prefix, "SHARE_MIN", 0.4)
    monkeypatch.setenv("WORLD_SIZE", str(ranks))
    m = model()
    seq, att, p = grouped_rows(3, prompt_len=prompt_len, extra_pad=0)  # shares saved 2/3 x 7/13 = 0.36, 2/3 x 40/46 = 0.58
    forward, seen = m.forward, []
    monkeypatch.setattr(m, "forward", functools.wraps(forward)(lambda **kw: seen.append(1) or forward(**kw)))
    with torch.no_grad():
        response_logprobs(m, seq, att, p, 1.0, n=3)
    assert len(seen) == calls


def naive_sample(m, ids, mask, steps):
    """Every row decoded to the end without a cache, the whole sequence recomputed each step,
    one uniform number per row per step: what `sample` must reproduce."""
    out, ended = [], torch.zeros(len(ids), dtype=torch.bool)
    for _ in range(steps):
        logp = m(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits[:, -1].float().log_softmax(-1)
        token = torch.where(ended, PAD, _draw(logp, torch.rand(len(ids), 1)))
        out.append((token, logp.gather(1, token[:, None]).squeeze(1)))
        ended |= token == EOS
        if ended.all():
            break
        ids, mask = torch.cat([ids, token[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack([t for t, _ in out], 1), torch.stack([lp for _, lp in out], 1)


def test_one_prefill_per_group_and_compaction_sample_what_full_decoding_samples(monkeypatch):
    from transformers import DynamicCache

    compactions = []
    select = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices", lambda c, i: compactions.append(len(i)) or select(c, i))
    m = model()
    with torch.no_grad():  # EOS likely enough that rows end at different steps and leave the batch
        m.lm_head.weight[EOS] = 1.2 * m.model.norm(m.model.embed_tokens.weight).mean(0)
    seq, att, p = grouped_rows(4, extra_pad=0)
    prompts, mask = seq[::4, :p], att[::4, :p]
    with torch.no_grad():
        torch.manual_seed(5)
        expected, expected_logprobs = naive_sample(m, prompts.repeat_interleave(4, 0), mask.repeat_interleave(4, 0), 10)
        torch.manual_seed(5)
        tokens, logprobs, entropy = sample(m, prompts, mask, n=4, max_new_tokens=10, temperature=1.0, eos_id=EOS,
                                           pad_id=PAD)
    ended_at = [row.index(EOS) if EOS in row else None for row in expected.tolist()]
    assert len({e for e in ended_at if e is not None}) >= 3 and None in ended_at  # ends at several steps, some never
    assert torch.equal(tokens[:, :expected.shape[1]], expected) and (tokens[:, expected.shape[1]:] == PAD).all()
    kept = expected != PAD
    assert torch.allclose(logprobs[:, :expected.shape[1]][kept], expected_logprobs[kept], atol=1e-6)
    assert (logprobs[:, :expected.shape[1]][~kept] == 0).all() and (entropy[:, :expected.shape[1]][~kept] == 0).all()
    assert len(compactions) >= 2 and compactions == sorted(compactions, reverse=True)  # rows left, twice or more
