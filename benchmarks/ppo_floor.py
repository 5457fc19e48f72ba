#!/usr/bin/env python3
"""The floor under benchmarks/ppo_throughput.py: the transformers model calls of one PPO update
doing the least work it allows (benchmarks/floor.py: finished answers out of the decoding
batch, no all-padding columns in the scoring and training passes; PPO answers each prompt
once, so nothing is shared), timed bare; prints one JSON line with each call's median time,
their sum per update, and the episodes/s that sum allows.

Same flags and workload as ppo_throughput.py (--workload synthetic or hh). Per update: the
decoding; the reference's, the reward model's and the critic's passes; `ppo-epochs` x
`mini-batches` forward+backward passes of the policy and the critic over a minibatch.

    .venv/bin/python benchmarks/ppo_floor.py [--workload hh] [--batch 32 --response-len 32 ...]
"""

from __future__ import annotations

import floor  # benchmarks/floor.py, beside this script
import workload

p = workload.parser()
p.add_argument("--ppo-epochs", type=int, default=1)
p.add_argument("--repeats", type=int, default=7, help="timings per call; the median is kept")
a = workload.parse(p)
policy, ref = workload.policy_and_reference(a)
reward, critic = workload.place(workload.scorer(a), a).eval(), workload.place(workload.scorer(a), a, trained=True)
b = floor.Batch(a, 1)
mini = a.batch // a.mini_batches
micro = a.micro_batch_size or mini

policy.eval()
times = {"decode_s": floor.median_s(a, lambda: floor.decode(policy, b, a), a.repeats)}
scoring = floor.score_passes({"reference_s": (ref, False), "reward_s": (reward.model, True),
                              "value_s": (critic.model, True)}, b, chunk=micro)
times.update({name: floor.median_s(a, call, a.repeats) for name, call in scoring.items()})
policy.train()
times["train_epoch_s"] = floor.median_s(
    a, lambda: floor.train([(policy, False), (critic.model, True)], b, mini, micro), a.repeats)
floor.report(a, times, times["decode_s"] + times["reference_s"] + times["reward_s"] + times["value_s"]
             + a.ppo_epochs * times["train_epoch_s"])
