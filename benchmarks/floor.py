"""What benchmarks/grpo_floor.py and ppo_floor.py share: the transformers model calls of one
stage-3 update doing the least work the update allows, timed bare (no sampling, loss,
advantage or bookkeeping of ours around them). No implementation that calls these models as
they are, and does the same reduced work, can run faster.

The reduced work, per update of `batch` answers to batch / group prompts:
  decode     each distinct prompt prefilled once (left-padded to the batch's longest), its cache
             copied to its group's rows; then one decoding call per answer token, with only the
             rows still answering in the batch and in the cache (an answer's length: exactly
             response-len under the synthetic workload, HH's lengths under hh)
  score      per chunk of micro-batch rows (whole groups, of similar lengths): the reference's
             and the reward model's forward pass (and the critic's, for PPO), each group's
             prompt read once, no column that every row of the chunk pads
  train      per minibatch and micro-batch, the same passes of the policy (and the critic) with
             their backward, over the whole batch (one epoch)
"""

from __future__ import annotations

import importlib
import json
import statistics
import time

import hh_workload  # benchmarks/hh_workload.py, beside this file
import torch
import workload  # benchmarks/workload.py, beside this file

from rlhf.core.ops import positions
from rlhf.sampling.prefix import length_sorted, prompt_once

generate = importlib.import_module("rlhf.sampling.generate")  # (rlhf.sampling.generate is also a function)


class Batch:
    """One update's rows as the floor computes them: prompts, answers and their lengths."""

    def __init__(self, a, group: int):
        self.group, self.rows = group, a.batch
        distinct = workload.prompts(a, a.batch // group)
        tok = workload.tokenizer(a.vocab)
        prompts = tok.pad({"input_ids": distinct}, padding_side="left", return_tensors="pt")
        self.prompt_ids, self.prompt_mask = prompts["input_ids"].to(a.device), prompts["attention_mask"].to(a.device)
        g = torch.Generator().manual_seed(a.seed)
        self.lengths = torch.full((a.batch,), a.response_len)
        if a.workload == "hh":
            measured = hh_workload.measured_lengths("answer_histogram")
            self.lengths = measured[torch.randint(len(measured), (a.batch,), generator=g)].clamp(max=a.response_len)
        answers = torch.randint(2, a.vocab, (a.batch, a.response_len), generator=g)
        answer_mask = (torch.arange(a.response_len)[None] < self.lengths[:, None]).long()
        self.sequences = torch.cat([self.prompt_ids.repeat_interleave(group, 0).cpu(), answers * answer_mask], 1).to(a.device)
        self.attention_mask = torch.cat([self.prompt_mask.repeat_interleave(group, 0).cpu(), answer_mask], 1).to(a.device)
        self.prompt_len = self.prompt_ids.shape[1]

    def chunks(self, rows: torch.Tensor, size: int) -> list[torch.Tensor]:
        """`rows` (whole groups) in chunks of `size`, groups of similar lengths together."""
        return rows[length_sorted(self.lengths[rows.cpu()], self.group).to(rows.device)].split(size)


def median_s(a, call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        workload.sync(a)
        start = time.perf_counter()
        call()
        workload.sync(a)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def decode(policy, b: Batch, a) -> None:
    """One prefill per prompt, then one call per answer token on the rows still answering."""
    cache = generate._kv_cache(policy.config, b.prompt_len + a.response_len)
    policy(input_ids=b.prompt_ids, attention_mask=b.prompt_mask, position_ids=positions(b.prompt_mask),
           use_cache=True, cache=cache, logits_to_keep=1)
    cache.batch_repeat_interleave(b.group)
    mask = b.prompt_mask.repeat_interleave(b.group, 0)
    position = positions(mask)[:, -1:]
    alive = torch.arange(b.rows, device=mask.device)
    for step in range(1, a.response_len):
        going = (b.lengths[alive.cpu()] > step).to(mask.device)
        if not going.any():
            break
        if not going.all():
            keep = going.nonzero().squeeze(1)
            alive, mask, position = alive[keep], mask[keep], position[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        position = position + 1
        policy(input_ids=b.sequences[alive, b.prompt_len + step - 1:b.prompt_len + step], attention_mask=mask,
               position_ids=position, use_cache=True, cache=cache)


def score_passes(models: dict, b: Batch, chunk: int) -> dict:
    """{name: a call running that model's scoring passes over the batch}: "logits" models (the
    reference) or "hidden" ones (the reward model's and critic's backbone)."""
    def run(model, hidden):
        with torch.no_grad():
            for rows in b.chunks(torch.arange(b.rows, device=b.sequences.device), chunk):
                prompt_once(model, b.sequences[rows], b.attention_mask[rows], b.prompt_len, b.group, hidden=hidden)
    return {name: (lambda m=m, h=h: run(m, h)) for name, (m, h) in models.items()}


def train(models: list, b: Batch, mini: int, micro: int) -> None:
    """Forward and backward of each trained model over every minibatch of the batch (whole
    groups, in order), by micro-batch: one pass over the rollout."""
    for minibatch in torch.arange(b.rows, device=b.sequences.device).split(mini):
        for rows in b.chunks(minibatch, micro):
            for model, hidden in models:
                out = prompt_once(model, b.sequences[rows], b.attention_mask[rows], b.prompt_len, b.group, hidden=hidden)
                (out.float().mean() if hidden else out.float().logsumexp(-1).mean()).backward()


def report(a, times: dict, update_s: float) -> None:
    print(json.dumps({"impl": "floor: transformers calls of the reduced work", **{k: round(v, 4) for k, v in times.items()},
                      "update_s": round(update_s, 4), "episodes_per_s": round(a.batch / update_s, 1),
                      "torch_threads": torch.get_num_threads(), "settings": vars(a)}))
