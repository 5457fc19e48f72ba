"""Forward passes over (prompt, response) rows that do no work on what the rows share or pad.

Stage 3 answers each prompt `samples_per_prompt` times, in consecutive rows, so a pass over its
rollout would compute every prompt that many times; and its rows are left-padded prompts then
right-padded responses, so a micro-batch carries padding columns that no row of it needs.
`prompt_once` computes each run's prompt once and hands its KV cache to the run's rows (the
prefix sharing of "Prefix Grouper", 2025), on the columns that some row of the batch uses. The
outputs are those of one pass over the full rows, up to float rounding (masked keys weigh exactly
0 in attention); with gradients too, since the cache keeps the prompt's graph.

No library does this for a transformers model on its own (vLLM shares prefixes only in its
engine), so it is ours: the model's own KV cache and transformers' batch_repeat_interleave.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from transformers import DynamicCache

from rlhf.core import distributed
from rlhf.core.ops import positions
from rlhf.models import unwrap


# Reading a prompt once takes two calls of the model instead of one, which costs more than it
# saves unless the repeated prompt is a large share of the pass: at least this share of its
# tokens (measured on 2 CPU cores: prompts of 24 tokens and answers of 32 in groups of 4, 32%
# saved, ran 10% slower shared; 48 and 32, 45% saved, 23% faster; HH's, ~45-60%, 2x faster).
SHARE_MIN = 0.4


def cache_kwarg(model) -> str:
    """The name a model's forward takes its KV cache by: transformers renamed past_key_values
    to cache in 5.x (read from the transformers model inside a peft wrapper, whose forward
    takes **kwargs)."""
    inner = unwrap(getattr(model, "module", model))  # (inside a DeepSpeed or local engine)
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def run_length(rows: Sequence) -> int:
    """n when `rows` come in runs of n equal rows (stage 3's groups of answers to one prompt),
    else 1."""
    n = next((i for i in range(1, len(rows)) if rows[i] != rows[0]), len(rows)) if len(rows) else 1
    if len(rows) % n or any(rows[i] != rows[i - i % n] for i in range(len(rows))):
        return 1
    return n


def tensor_run_length(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int) -> int:
    """n when every run of n rows of the prompt tensors holds one prompt, else 1."""
    if n <= 1 or len(prompt_ids) % n:
        return 1
    same = all((t.view(-1, n, t.shape[1]) == t[::n, None]).all() for t in (prompt_ids, prompt_mask))
    return n if same else 1


def used_columns(attention_mask: torch.Tensor, prompt_len: int) -> tuple[int, int]:
    """(first, end): the columns some row attends to: the prompt's left padding before `first`
    and the responses' right padding from `end` are padding in every row."""
    used = attention_mask.bool().any(0)
    first = int(used[:prompt_len].int().argmax()) if used[:prompt_len].any() else prompt_len - 1
    end = prompt_len + int(used[prompt_len:].nonzero().max()) + 1 if used[prompt_len:].any() else prompt_len + 1
    return min(first, prompt_len - 1), end


def prompt_once(model, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, n: int = 1,
                hidden: bool = False) -> torch.Tensor:
    """The model's outputs at positions prompt_len - 1 .. the last column any row uses,
    [B, R' + 1, ...] with R' <= the rows' R response columns (logits, or with `hidden` the last
    hidden states of a backbone such as `model.model`), over rows whose first `prompt_len`
    columns come in runs of `n` equal prompts: each prompt computed once, columns that are
    padding in every row skipped (callers `widen` what they compute from the outputs)."""
    first, end = used_columns(attention_mask, prompt_len)
    seq, att = sequences[:, first:end], attention_mask[:, first:end]
    p = prompt_len - first
    # With several ranks, one call per pass: under ZeRO-3 every forward is a collective, so all
    # ranks must make the same calls, and whether sharing pays depends on each rank's own rows.
    n = tensor_run_length(seq[:, :p], att[:, :p], n) if distributed.world_size() == 1 else 1
    if (n - 1) / n * p / seq.shape[1] < SHARE_MIN or _recomputes(model):  # (checkpointing keeps no cache): one pass
        out = model(input_ids=seq, attention_mask=att, position_ids=positions(att), use_cache=False,
                    **({} if hidden else {"logits_to_keep": seq.shape[1] - p + 1}))
        out = out.last_hidden_state[:, p - 1:] if hidden else out.logits
    else:
        out = _shared(model, seq, att, p, n, hidden)
    return out


def widen(x: torch.Tensor, width: int) -> torch.Tensor:
    """[B, w, ...] -> [B, width, ...], zeros in the columns prompt_once skipped as padding."""
    return torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, width - x.shape[1])) if x.shape[1] < width else x


def _shared(model, seq: torch.Tensor, att: torch.Tensor, p: int, n: int, hidden: bool) -> torch.Tensor:
    """Outputs at positions p - 1 .. the end: each run's prompt prefilled once, its cache
    repeated to the run's n rows, then the responses read against it."""
    cache = DynamicCache()
    key = cache_kwarg(model)
    head = model(input_ids=seq[::n, :p], attention_mask=att[::n, :p], position_ids=positions(att[::n, :p]),
                 use_cache=True, **({} if hidden else {"logits_to_keep": 1}), **{key: cache})
    head = (head.last_hidden_state if hidden else head.logits)[:, -1:]
    cache.batch_repeat_interleave(n)
    rest = model(input_ids=seq[:, p:], attention_mask=att, position_ids=positions(att)[:, p:], use_cache=True,
                 **{key: cache})
    return torch.cat([head.repeat_interleave(n, 0), rest.last_hidden_state if hidden else rest.logits], 1)


def _recomputes(model) -> bool:
    """Training with gradient checkpointing, where transformers turns the cache off."""
    inner = unwrap(getattr(model, "module", model))
    flag = "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return torch.is_grad_enabled() and model.training and bool(getattr(inner, flag, False))


def length_sorted(lengths: torch.Tensor, n: int = 1) -> torch.Tensor:
    """Row indices with each run of n rows kept together, the runs ordered by their longest row:
    consecutive rows then pad to similar widths (used_columns trims the rest)."""
    runs = torch.arange(len(lengths), device=lengths.device).view(-1, n)
    order = lengths.view(-1, n).max(1).values.argsort(stable=True)
    return runs[order].flatten()
