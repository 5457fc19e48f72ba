#!/usr/bin/env python3
"""PPO throughput of rlhf's trainer on the peer benchmark's workload; prints one JSON line.

Same flags and meaning as trl 1.12's peer script `trl112_ppo.py` (not in this repository;
docs/development.md says how to get trl 1.12 beside our trl and run it): tiny
Llama policy, reference, reward and value built from LlamaConfig(vocab, hidden, intermediate,
layers, heads) with random weights from --seed; `batch` random prompts of `prompt-len` tokens per
update; exactly `response-len` sampled tokens per episode (EOS held back), temperature 1, top_k 0,
top_p 1; `ppo-epochs` epochs over `mini-batches` minibatches per update; `updates` updates.
--workload hh: HH-RLHF's prompt and answer lengths (benchmarks/hh_workload.py), answers ended by
the policy's EOS rule, as in the peer.

    .venv/bin/python benchmarks/ppo_throughput.py --batch 32 --response-len 32 --updates 4
"""

from __future__ import annotations

import torch
import workload  # benchmarks/workload.py, beside this script
from rlhf.config import PPOStageConfig
from rlhf.stages.online_rl.roles import Roles, adamw, local_engine

p = workload.parser()
p.add_argument("--ppo-epochs", type=int, default=1)
a = workload.parse(p)
tok = workload.tokenizer(a.vocab)
policy, ref = workload.policy_and_reference(a)
reward = workload.scorer(a)
value = workload.scorer(a)
value.load_state_dict(reward.state_dict())
reward, value = workload.place(reward, a), workload.place(value, a, trained=True)
cfg = PPOStageConfig(rollout_batch_size=a.batch, mini_batch_size=a.batch // a.mini_batches, ppo_epochs=a.ppo_epochs,
                     micro_batch_size=a.micro_batch_size or None, learning_rate=1e-5, temperature=1.0)
roles = Roles(policy=local_engine(policy, adamw(policy.parameters(), cfg.learning_rate), cfg),
              ref=ref, reward=reward.eval().requires_grad_(False),
              critic=local_engine(value, adamw(value.parameters(), cfg.learning_rate), cfg))

prompts = workload.prompts(a, a.batch * a.updates)
batches = [prompts[u * a.batch:(u + 1) * a.batch] for u in range(a.updates)]
phases, wall, answer_lengths = workload.run_updates(roles, tok, cfg, a, batches)
workload.report("rlhf-ppo", a, phases, wall, batches, answer_lengths)
