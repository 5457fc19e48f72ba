#!/usr/bin/env python3
"""The floor under benchmarks/grpo_throughput.py: the transformers model calls one GRPO update
cannot do without, timed bare (no sampling, loss or bookkeeping of ours around them); prints one
JSON line with each call's median time, their sum per update, and the episodes/s that sum allows.

Same flags and workload as grpo_throughput.py. Per update: decoding `response-len` tokens for
`batch` rows through the policy with the sampler's own KV cache (the prefill included), one
forward pass each of the reference and the reward model over the finished sequences, and
`mini-batches` forward+backward passes of the policy over its minibatch's response positions.
No implementation that calls these models as they are can run faster than this.

    .venv/bin/python benchmarks/grpo_floor.py [--batch 32 --response-len 32 ...]
"""

from __future__ import annotations

import importlib
import json
import statistics
import time

import torch
from transformers import LlamaForSequenceClassification

import workload  # benchmarks/workload.py, beside this script

generate = importlib.import_module("rlhf.sampling.generate")  # (rlhf.sampling.generate is also a function)

p = workload.parser()
p.add_argument("--group", type=int, default=4, help="answers per prompt (not used: the calls are the same)")
p.add_argument("--beta", type=float, default=0.04, help="(not used: the reference pass is counted)")
p.add_argument("--repeats", type=int, default=7, help="timings per call; the median is kept")
a = workload.parse(p)
policy, ref = workload.policy_and_reference(a)
reward = workload.place(LlamaForSequenceClassification(workload.llama_config(a, num_labels=1)), a).eval()
rows, prompt_len, response_len = a.batch, a.prompt_len, a.response_len
prompts = torch.randint(2, a.vocab, (rows, prompt_len), device=a.device)
sequences = torch.randint(2, a.vocab, (rows, prompt_len + response_len), device=a.device)
ones = torch.ones_like(sequences)


def median_s(call) -> float:
    call()  # warm-up
    times = []
    for _ in range(a.repeats):
        workload.sync(a)
        start = time.perf_counter()
        call()
        workload.sync(a)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def decode() -> None:
    cache = generate._kv_cache(policy.config, prompt_len + response_len)
    mask = ones[:, :prompt_len]
    policy(input_ids=prompts, attention_mask=mask, use_cache=True, cache=cache, logits_to_keep=1)
    token = prompts[:, -1:]
    for step in range(response_len - 1):
        mask = ones[:, :prompt_len + step + 1]
        position = torch.full((rows, 1), prompt_len + step, device=a.device)
        policy(input_ids=token, attention_mask=mask, position_ids=position, use_cache=True, cache=cache)


def train_minibatch() -> None:
    part = sequences[: rows // a.mini_batches]
    logits = policy(input_ids=part, attention_mask=ones[: len(part)], use_cache=False,
                    logits_to_keep=response_len + 1).logits
    logits.float().logsumexp(-1).mean().backward()


policy.eval()
times = {"decode_s": median_s(decode)}
with torch.no_grad():
    times["reference_s"] = median_s(lambda: ref(input_ids=sequences, attention_mask=ones, use_cache=False,
                                                logits_to_keep=response_len + 1))
    times["reward_s"] = median_s(lambda: reward(input_ids=sequences, attention_mask=ones, use_cache=False))
policy.train()
times["train_minibatch_s"] = median_s(train_minibatch)
update_s = times["decode_s"] + times["reference_s"] + times["reward_s"] + a.mini_batches * times["train_minibatch_s"]
print(json.dumps({"impl": "floor: transformers calls alone", **{k: round(v, 4) for k, v in times.items()},
                  "update_s": round(update_s, 4), "episodes_per_s": round(rows / update_s, 1),
                  "torch_threads": torch.get_num_threads(), "settings": vars(a)}))
