#!/usr/bin/env python3
"""Peer benchmark: GRPO throughput of trl's GRPOTrainer (trl >= 1.13, the version the project
installs), on a tiny Llama built from a config, on CPU, offline. Prints one JSON line.

Run it with the project's own interpreter:
    .venv/bin/python benchmarks/peers/trl_grpo.py --batch 32 --group 4 --response-len 32 --updates 4

Workload, identical for any implementation compared with it:
  policy (and its frozen reference) and reward model: LlamaConfig(vocab, hidden, intermediate,
  layers, heads), random init from --seed (reward model from --seed + 1); each update samples
  `batch` episodes = batch / group random prompts of `prompt-len` tokens x `group` answers each,
  exactly `response-len` tokens per answer (EOS held back), temperature 1, top_k 0, top_p 1;
  group-normalised advantages (r - mean) / std; KL to the reference as a k3 term in the loss with
  coefficient --beta (0 = no reference pass); `mini-batches` optimizer steps per update, one
  pass (mu = 1); `updates` updates.
Figure: episodes per second over the whole train() call (generation + scoring + optimisation).
--workload hh (benchmarks/hh_workload.py): HH-RLHF's prompt lengths up to `prompt-len` and answer
lengths up to `response-len`, ended by the policy's EOS rule, on other defaults; the answer tokens
from trl's logged completions/mean_length, the prompt tokens from the drawn prompts.
"""
import argparse, json, os, resource, sys, tempfile, time

for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):  # before transformers is imported
    os.environ.setdefault(k, "1")
os.environ.setdefault("WANDB_DISABLED", "true")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import hh_workload

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
p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
p.add_argument("--seed", type=int, default=0)
a = hh_workload.parse(p)
assert a.batch % a.group == 0 and a.batch % a.mini_batches == 0
hh = a.workload == "hh"

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast
import trl
from trl import GRPOConfig, GRPOTrainer

if a.threads:
    torch.set_num_threads(a.threads)

vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, a.vocab)}}
wl = Tokenizer(models.WordLevel(vocab, unk_token="t2"))
wl.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
wl.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
tok = PreTrainedTokenizerFast(tokenizer_object=wl, pad_token="<pad>", eos_token="<eos>")


def config(**kw):
    return LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                       num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                       max_position_embeddings=a.prompt_len + a.response_len + 8,
                       pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False, **kw)


work = tempfile.mkdtemp(prefix="trl_grpo_bench_")
torch.manual_seed(a.seed)
LlamaForCausalLM(config()).save_pretrained(f"{work}/policy")
torch.manual_seed(a.seed + 1)
LlamaForSequenceClassification(config(num_labels=1)).save_pretrained(f"{work}/reward")
for d in ("policy", "reward"):
    tok.save_pretrained(f"{work}/{d}")

n_prompts = a.batch // a.group * a.updates
if hh:
    rows = hh_workload.prompts(n_prompts, a.vocab, a.prompt_len, a.seed)
else:
    g = torch.Generator().manual_seed(a.seed)
    rows = torch.randint(2, a.vocab, (n_prompts, a.prompt_len), generator=g).tolist()
prompts = [" ".join(f"t{i}" for i in row) for row in rows]
ds = Dataset.from_dict({"prompt": prompts})

per_step = a.batch // a.mini_batches
args = GRPOConfig(output_dir=f"{work}/out", per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
                  steps_per_generation=a.mini_batches, num_generations=a.group, num_iterations=1,
                  max_steps=a.updates * a.mini_batches, max_completion_length=a.response_len,
                  generation_kwargs=None if hh else {"min_new_tokens": a.response_len},
                  temperature=1.0, top_k=0, top_p=1.0, beta=a.beta, learning_rate=1e-5,
                  logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                  shuffle_dataset=False, seed=a.seed, disable_dropout=True)
# under hh the policy is an instance of the EOS rule's class; trl builds the reference from its
# path (config._name_or_path), as the LlamaForCausalLM saved there
policy = (hh_workload.EosByLength.from_pretrained(f"{work}/policy").end_like_hh(a.response_len, tok.eos_token_id)
          if hh else f"{work}/policy")
trainer = GRPOTrainer(model=policy, reward_funcs=f"{work}/reward", args=args, train_dataset=ds,
                      processing_class=tok, reward_processing_classes=tok)
t0 = time.perf_counter()
trainer.train()
wall = time.perf_counter() - t0
n = a.batch * a.updates
lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
figures = {}
if hh:  # one logged mean per generation of `batch` answers
    assert len(lengths) == a.updates, lengths
    figures = hh_workload.throughput(a.group * sum(map(len, rows)), round(sum(lengths) * a.batch), n, wall)
print(json.dumps({"impl": f"trl-{trl.__version__}-GRPOTrainer", "episodes": n, "updates": a.updates,
                  "wall_s": round(wall, 3), "episodes_per_s": round(n / wall, 3),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "mean_completion_tokens": round(sum(lengths) / max(len(lengths), 1), 1), **figures,
                  "torch_threads": torch.get_num_threads(), "settings": vars(a)}))
