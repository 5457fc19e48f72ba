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
--beta 0: the loop always reports the KL.)

    .venv/bin/python benchmarks/grpo_throughput.py --batch 32 --group 4 --response-len 32 --updates 4
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

from rlhf.algos.rewards import shape_scores
from rlhf.config import PPOStageConfig
from rlhf.stages.online_rl.loop import advantages_of, optimise
from rlhf.stages.online_rl.roles import Roles, local_engine
from rlhf.stages.online_rl.rollout import rollout

p = argparse.ArgumentParser()
p.add_argument("--vocab", type=int, default=512)
p.add_argument("--hidden", type=int, default=128)
p.add_argument("--intermediate", type=int, default=256)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--batch", type=int, default=32, help="episodes per update (prompts x group)")
p.add_argument("--group", type=int, default=4, help="answers per prompt")
p.add_argument("--prompt-len", type=int, default=24)
p.add_argument("--response-len", type=int, default=32)
p.add_argument("--updates", type=int, default=4)
p.add_argument("--mini-batches", type=int, default=2)
p.add_argument("--beta", type=float, default=0.04)
p.add_argument("--micro-batch-size", type=int, default=0,
               help="ours only (not in the peer script): episodes per forward/backward; 0 = the minibatch")
p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
assert a.batch % a.group == 0 and a.batch % a.mini_batches == 0
if a.threads:
    torch.set_num_threads(a.threads)

vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, a.vocab)}}
tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t2")),
                              pad_token="<pad>", eos_token="<eos>")


def config(**kw):
    return LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                       num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                       max_position_embeddings=a.prompt_len + a.response_len + 8,
                       pad_token_id=0, eos_token_id=1, tie_word_embeddings=False, **kw)


torch.manual_seed(a.seed)
policy = LlamaForCausalLM(config())
ref = LlamaForCausalLM(config())
ref.load_state_dict(policy.state_dict())
torch.manual_seed(a.seed + 1)
reward = LlamaForSequenceClassification(config(num_labels=1))
cfg = PPOStageConfig(advantage="grpo", samples_per_prompt=a.group, rollout_batch_size=a.batch,
                     mini_batch_size=a.batch // a.mini_batches, ppo_epochs=1, kl_in_reward=False,
                     kl_loss_coef=a.beta, kl_estimator="k3", micro_batch_size=a.micro_batch_size or None,
                     learning_rate=1e-5, temperature=1.0)
roles = Roles(policy=local_engine(policy, torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, eps=1e-5), cfg),
              ref=ref.eval().requires_grad_(False), reward=reward.eval().requires_grad_(False))

g = torch.Generator().manual_seed(a.seed)
prompts_per_update = a.batch // a.group
prompts = torch.randint(2, a.vocab, (prompts_per_update * a.updates, a.prompt_len), generator=g).tolist()
groups = torch.arange(prompts_per_update).repeat_interleave(a.group)
phases = {"generate_s": 0.0, "score_s": 0.0, "train_s": 0.0}
t0 = time.perf_counter()
for update in range(a.updates):
    batch = [prompt for prompt in prompts[update * prompts_per_update:(update + 1) * prompts_per_update]
             for _ in range(a.group)]
    r = rollout(roles, tok, batch, cfg, max_new_tokens=a.response_len, groups=groups, min_new_tokens=a.response_len)
    phases["generate_s"] += r.seconds["generate"]
    phases["score_s"] += r.seconds["score"]
    t = time.perf_counter()
    scores = shape_scores(r.raw_scores, r.ended, bias=0.0, clip=cfg.score_clip, no_eos_score=cfg.no_eos_score)
    _, advantages, returns = advantages_of(r, scores, cfg, cfg.beta)
    optimise(roles, r, advantages, returns, cfg, [], tok.pad_token_id)
    phases["train_s"] += time.perf_counter() - t
wall = time.perf_counter() - t0
n = a.batch * a.updates
print(json.dumps({"impl": "rlhf-grpo", "episodes": n, "updates": a.updates, "wall_s": round(wall, 3),
                  "episodes_per_s": round(n / wall, 3),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "gen_tokens_per_s": round(n * a.response_len / phases["generate_s"], 1),
                  **{k: round(v, 3) for k, v in phases.items()},
                  "torch_threads": torch.get_num_threads(), "settings": vars(a)}))
