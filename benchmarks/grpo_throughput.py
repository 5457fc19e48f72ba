#!/usr/bin/env python3
"""GRPO throughput of rlhf's stage-3 loop (`algo=grpo`) on the peer benchmark's workload; prints
one JSON line with the keys of benchmarks/ppo_throughput.py.

Same flags and meaning as the peer script benchmarks/peers/trl_grpo.py (trl's GRPOTrainer, the
trl this package installs): tiny Llama policy, its frozen reference and a reward model built from
LlamaConfig(vocab, hidden, intermediate, layers, heads), random weights from --seed (the reward
model from --seed + 1); each update samples `batch` episodes = batch / group random prompts of
`prompt-len` tokens x `group` answers, exactly `response-len` tokens each (EOS held back),
temperature 1, top_k 0, top_p 1; group-normalised advantages; the KL to the reference as a k3
term in the loss with coefficient --beta; `mini-batches` optimizer steps per update, one pass;
`updates` updates. No critic is built. (Unlike the peer, the reference pass also runs at
--beta 0: the loop always reports the KL.) --workload hh: HH-RLHF's prompt and answer lengths
(benchmarks/hh_workload.py), answers ended by the policy's EOS rule, as in the peer.

    .venv/bin/python benchmarks/grpo_throughput.py --batch 32 --group 4 --response-len 32 --updates 4
"""

from __future__ import annotations

import torch
import workload  # benchmarks/workload.py, beside this script
from rlhf.config import PPOStageConfig
from rlhf.stages.online_rl.roles import Roles, adamw, local_engine

p = workload.parser()
p.add_argument("--group", type=int, default=4, help="answers per prompt")
p.add_argument("--beta", type=float, default=0.04)
a = workload.parse(p)
assert a.batch % a.group == 0 and a.batch % a.mini_batches == 0
tok = workload.tokenizer(a.vocab)
policy, ref = workload.policy_and_reference(a)
torch.manual_seed(a.seed + 1)
reward = workload.place(workload.scorer(a), a)
cfg = PPOStageConfig(advantage="grpo", samples_per_prompt=a.group, rollout_batch_size=a.batch,
                     mini_batch_size=a.batch // a.mini_batches, ppo_epochs=1, kl_in_reward=False,
                     kl_loss_coef=a.beta, kl_estimator="k3", micro_batch_size=a.micro_batch_size or None,
                     learning_rate=1e-5, temperature=1.0)
roles = Roles(policy=local_engine(policy, adamw(policy.parameters(), cfg.learning_rate), cfg),
              ref=ref, reward=reward.eval().requires_grad_(False))

per_update = a.batch // a.group
prompts = workload.prompts(a, per_update * a.updates)
batches = [[q for q in prompts[u * per_update:(u + 1) * per_update] for _ in range(a.group)] for u in range(a.updates)]
phases, wall, answer_lengths = workload.run_updates(roles, tok, cfg, a, batches,
                                                    groups=torch.arange(per_update).repeat_interleave(a.group))
workload.report("rlhf-grpo", a, phases, wall, batches, answer_lengths)
