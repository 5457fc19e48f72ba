#!/usr/bin/env python3
"""The sampler's KV cache against transformers' two: milliseconds per decoding step of
rlhf.sampling.sample with each, alternated, medians; prints one JSON line.

  inplace  the sampler's own (rlhf.sampling.generate._InPlaceLayer: preallocated, written in place,
           attention over the filled part only)
  dynamic  transformers' DynamicCache (grows by concatenation: a copy of every layer's keys and
           values per token)
  static   transformers' StaticCache (preallocated; attention over the whole length, masked)

Same model flags as the throughput benchmarks; `batch` rows, `response-len` sampled tokens each.

    .venv/bin/python benchmarks/kv_cache.py [--vocab 4096 --hidden 256 --intermediate 688 --layers 4 --batch 64 --response-len 64]
"""

from __future__ import annotations

import importlib
import json
import statistics
import time

import torch
from transformers import DynamicCache, StaticCache

import workload  # benchmarks/workload.py, beside this script

generate = importlib.import_module("rlhf.sampling.generate")  # (rlhf.sampling.generate is also a function)
ours = generate._kv_cache
CACHES = {"inplace": ours,
          "dynamic": lambda config, capacity: DynamicCache(config=config),
          "static": lambda config, capacity: StaticCache(config=config, max_cache_len=capacity)}

p = workload.parser()
p.add_argument("--repeats", type=int, default=7)
a = workload.parse(p)
policy, _ = workload.policy_and_reference(a)
policy.eval()
prompts = torch.randint(2, a.vocab, (a.batch, a.prompt_len), device=a.device)
mask = torch.ones_like(prompts)


def ms_per_step(name: str) -> float:
    generate._kv_cache = CACHES[name]
    workload.sync(a)
    start = time.perf_counter()
    generate.sample(policy, prompts, mask, max_new_tokens=a.response_len, temperature=1.0, eos_id=1, pad_id=0,
                    min_new_tokens=a.response_len)
    workload.sync(a)
    return (time.perf_counter() - start) * 1000 / a.response_len


times: dict[str, list[float]] = {name: [] for name in CACHES}
for name in CACHES:  # warm-up
    ms_per_step(name)
for _ in range(a.repeats):
    for name in CACHES:
        times[name].append(ms_per_step(name))
generate._kv_cache = ours
print(json.dumps({"ms_per_step": {k: round(statistics.median(v), 3) for k, v in times.items()},
                  "range": {k: [round(min(v), 3), round(max(v), 3)] for k, v in times.items()},
                  "torch_threads": torch.get_num_threads(), "settings": vars(a)}))
