#!/usr/bin/env python3
"""The floor under benchmarks/grpo_throughput.py: the transformers model calls of one GRPO
update doing the least work it allows (benchmarks/floor.py: one prefill per prompt, finished
answers out of the decoding batch, each group's prompt read once and no all-padding columns in
the scoring and training passes), timed bare; prints one JSON line with each call's median time,
their sum per update, and the episodes/s that sum allows.

Same flags and workload as grpo_throughput.py (--workload synthetic or hh). Per update: the
decoding; the reference's and the reward model's passes; `mini-batches` forward+backward passes
of the policy, one over each minibatch.

    .venv/bin/python benchmarks/grpo_floor.py [--workload hh] [--batch 32 --response-len 32 ...]
"""

from __future__ import annotations

import floor  # benchmarks/floor.py, beside this script
import workload
from transformers import LlamaForSequenceClassification

p = workload.parser()
p.add_argument("--group", type=int, default=4, help="answers per prompt")
p.add_argument("--beta", type=float, default=0.04, help="(not used: the reference pass is counted)")
p.add_argument("--repeats", type=int, default=7, help="timings per call; the median is kept")
a = workload.parse(p)
policy, ref = workload.policy_and_reference(a)
reward = workload.place(LlamaForSequenceClassification(workload.llama_config(a, num_labels=1)), a).eval()
b = floor.Batch(a, a.group)
mini = a.batch // a.mini_batches
micro = a.micro_batch_size or mini

policy.eval()
times = {"decode_s": floor.median_s(a, lambda: floor.decode(policy, b, a), a.repeats)}
scoring = floor.score_passes({"reference_s": (ref, False), "reward_s": (reward.model, True)}, b,
                             chunk=max(a.group, micro // a.group * a.group))
times.update({name: floor.median_s(a, call, a.repeats) for name, call in scoring.items()})
policy.train()
times["train_epoch_s"] = floor.median_s(a, lambda: floor.train([(policy, False)], b, mini, micro), a.repeats)
floor.report(a, times, times["decode_s"] + times["reference_s"] + times["reward_s"]
             + times["train_epoch_s"])
