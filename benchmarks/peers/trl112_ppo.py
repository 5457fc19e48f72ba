#!/usr/bin/env python3
"""Peer benchmark: PPO throughput of trl 1.12.0's PPOTrainer (the last trl release with PPO),
on a tiny Llama built from a config, on CPU, offline. Prints one JSON line.

Run it with the project's own interpreter (it needs torch, transformers, datasets, accelerate):
    .venv/bin/python benchmarks/peers/trl112_ppo.py --batch 32 --response-len 32 --updates 4
trl 1.12.0 is installed on first use with `pip install --no-deps --target` into a cache folder
($RLHF_BENCH_CACHE, default ~/.cache/rlhf-bench), so it never touches the project's trl.

Workload, identical for any implementation that is compared with it:
  policy, reference, reward and value: LlamaConfig(vocab, hidden, intermediate, layers, heads),
  random init from --seed; `batch` random prompts of `prompt-len` tokens per update; every
  episode samples exactly `response-len` tokens (EOS suppressed), temperature 1, top_k 0,
  top_p 1; `ppo-epochs` epochs over `mini-batches` minibatches per update; `updates` updates.
Figure: episodes per second over the whole train() call (rollout + scoring + optimisation).
--workload hh (benchmarks/hh_workload.py): HH-RLHF's prompt lengths up to `prompt-len` and answer
lengths up to `response-len`, ended by the policy's EOS rule (trl's stop_token="eos"), on other
defaults; trl logs no answer lengths, so they are read off the responses it cuts at their EOS.
"""
import argparse, json, os, resource, subprocess, sys, time

for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):  # before transformers is imported
    os.environ.setdefault(k, "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import hh_workload

p = argparse.ArgumentParser()
p.add_argument("--vocab", type=int, default=512)
p.add_argument("--hidden", type=int, default=128)
p.add_argument("--intermediate", type=int, default=256)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--prompt-len", type=int, default=24)
p.add_argument("--response-len", type=int, default=32)
p.add_argument("--updates", type=int, default=4)
p.add_argument("--ppo-epochs", type=int, default=1)
p.add_argument("--mini-batches", type=int, default=2)
p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
p.add_argument("--seed", type=int, default=0)
a = hh_workload.parse(p)
hh = a.workload == "hh"

cache = os.path.join(os.environ.get("RLHF_BENCH_CACHE", os.path.expanduser("~/.cache/rlhf-bench")), "trl112")
if not os.path.isdir(os.path.join(cache, "trl")):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", cache, "trl==1.12.0"],
                   check=True, stdout=sys.stderr)
sys.path.insert(0, cache)

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast
import trl
from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer

assert trl.__version__.startswith("1.12"), trl.__version__
if a.threads:
    torch.set_num_threads(a.threads)

vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, a.vocab)}}
tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t2")),
                              pad_token="<pad>", eos_token="<eos>")
tok.padding_side = "left"


def config(**kw):
    return LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                       num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                       max_position_embeddings=a.prompt_len + a.response_len + 8,
                       pad_token_id=0, eos_token_id=1, tie_word_embeddings=False, **kw)


torch.manual_seed(a.seed)
policy = (hh_workload.EosByLength(config()).end_like_hh(a.response_len, tok.eos_token_id) if hh else
          LlamaForCausalLM(config()))
ref = LlamaForCausalLM(config()); ref.load_state_dict(policy.state_dict())
reward = LlamaForSequenceClassification(config(num_labels=1))
value = LlamaForSequenceClassification(config(num_labels=1)); value.load_state_dict(reward.state_dict())
for m in (policy, ref):
    if not hh:
        m.generation_config.eos_token_id = None  # every episode generates exactly response-len tokens
    m.generation_config.pad_token_id = 0

n = a.batch * a.updates
if hh:
    prompts = hh_workload.prompts(n, a.vocab, a.prompt_len, a.seed)
else:
    g = torch.Generator().manual_seed(a.seed)
    prompts = torch.randint(2, a.vocab, (n, a.prompt_len), generator=g).tolist()
ds = Dataset.from_dict({"input_ids": prompts})

args = PPOConfig(output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "trl112_ppo_bench"),
                 per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
                 num_mini_batches=a.mini_batches, num_ppo_epochs=a.ppo_epochs, total_episodes=n,
                 response_length=a.response_len, local_rollout_forward_batch_size=a.batch,
                 temperature=1.0, learning_rate=1e-5, logging_steps=1, save_strategy="no", report_to="none",
                 use_cpu=True, bf16=False, stop_token="eos" if hh else None, num_sample_generations=0, seed=a.seed)
answer_lengths = []
truncate = ppo_trainer.truncate_response


def truncate_and_measure(stop_token_id, pad_token_id, responses):
    """trl's cut of each response after its EOS, measuring the answers on the way."""
    answer_lengths.append(hh_workload.answer_lengths(responses, stop_token_id))
    return truncate(stop_token_id, pad_token_id, responses)


if hh:
    ppo_trainer.truncate_response = truncate_and_measure
trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                     value_model=value, train_dataset=ds)
t0 = time.perf_counter()
trainer.train()
wall = time.perf_counter() - t0
updates = len([h for h in trainer.state.log_history if "objective/scores" in h])
figures = {}
if hh:
    answers = torch.cat(answer_lengths)
    assert len(answers) == n, len(answers)
    figures = {**hh_workload.throughput(sum(map(len, prompts)), int(answers.sum()), n, wall),
               **hh_workload.spread(answers)}
print(json.dumps({"impl": f"trl-{trl.__version__}-PPOTrainer", "episodes": n, "updates": updates,
                  "wall_s": round(wall, 3), "episodes_per_s": round(n / wall, 3),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **figures,
                  "torch_threads": torch.get_num_threads(), "settings": vars(a)}))
