"""What benchmarks/ppo_throughput.py and grpo_throughput.py share: the peer scripts' flags, the
tiny Llama and word-level tokenizer they build, the prompts, the timed loop of updates, and the
JSON line. `--workload hh` (hh_workload.py) gives prompts and answers HH-RLHF's lengths."""

from __future__ import annotations

import argparse
import json
import resource
import time

import hh_workload  # benchmarks/hh_workload.py, beside this file
import torch
from tokenizers import Tokenizer, models
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast)

from rlhf.core.distributed import enable_checkpointing
from rlhf.stages.online_rl.rollout import rollout
from rlhf.stages.online_rl.update import update


def parser() -> argparse.ArgumentParser:
    """The flags both peer scripts take; each benchmark adds its own."""
    p = argparse.ArgumentParser()
    for name, default in (("vocab", 512), ("hidden", 128), ("intermediate", 256), ("layers", 2), ("heads", 4)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--batch", type=int, default=32, help="episodes per update")
    p.add_argument("--prompt-len", type=int, default=24)
    p.add_argument("--response-len", type=int, default=32)
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--mini-batches", type=int, default=2)
    p.add_argument("--micro-batch-size", type=int, default=0,
                   help="ours only (not in the peer scripts): episodes per forward/backward; 0 = the minibatch")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--seed", type=int, default=0)
    # ours only: where and how the models compute (the peers run fp32 on the CPU)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the trained models' activations in the backward pass (model.gradient_checkpointing)")
    p.add_argument("--rollout-engine", default="hf", choices=("hf", "vllm"),
                   help="what samples the rollouts (ppo.rollout_engine); vllm needs `make setup-vllm`'s environment")
    p.add_argument("--vllm-enforce-eager", action="store_true",
                   help="vllm.enforce_eager=true: no CUDA graphs / compilation (starts in seconds); eager is already the CPU default")
    p.add_argument("--model", default=None,
                   help="a Hugging Face folder of a causal LM (e.g. SmolLM2-135M) for the policy and reference instead of "
                        "the built Llama (its vocabulary replaces --vocab; the size flags are then ignored); the reward "
                        "and value models get its config with random weights")
    return p


def parse(p: argparse.ArgumentParser):
    """The flags (and --workload), with torch's thread count set from --threads."""
    a = hh_workload.parse(p)
    if a.workload == "hh" and a.rollout_engine == "vllm":
        p.error("--workload hh ends answers by a rule in the transformers policy, which vLLM does not run")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model:
        a.vocab = AutoConfig.from_pretrained(a.model).vocab_size
    return a


def policy_and_reference(a) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """The policy from --seed and its frozen reference, a copy of the same weights; under hh the
    policy ends its answers at HH's lengths (hh_workload.EosByLength), the reference is plain."""
    torch.manual_seed(a.seed)
    hh = a.workload == "hh"
    if a.model:
        policy = (hh_workload.EosByLength if hh else AutoModelForCausalLM).from_pretrained(a.model, dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    else:
        policy = (hh_workload.EosByLength if hh else LlamaForCausalLM)(llama_config(a))
        ref = LlamaForCausalLM(llama_config(a))
        ref.load_state_dict(policy.state_dict())
    if hh:
        policy.end_like_hh(a.response_len, tokenizer(a.vocab).eos_token_id)
    return place(policy, a, trained=True), place(ref, a).eval().requires_grad_(False)


def place(model, a, trained: bool = False):
    """The model on --device in --dtype, with gradient checkpointing when trained and asked for."""
    model = model.to(device=a.device, dtype=getattr(torch, a.dtype))
    if trained and a.gradient_checkpointing:
        enable_checkpointing(model)
    return model


def prompts(a, n: int) -> list[list[int]]:
    """n prompts of random token ids from --seed: prompt-len each, or HH's lengths up to it."""
    if a.workload == "hh":
        return hh_workload.prompts(n, a.vocab, a.prompt_len, a.seed)
    g = torch.Generator().manual_seed(a.seed)
    return torch.randint(2, a.vocab, (n, a.prompt_len), generator=g).tolist()


def tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    ids = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, vocab)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(ids, unk_token="t2")),
                                   pad_token="<pad>", eos_token="<eos>")


def scorer(a):
    """A reward or value model with random weights: the built Llama's config, or --model's."""
    if a.model:
        return AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(a.model, num_labels=1),
                                                              dtype=torch.float32)
    return LlamaForSequenceClassification(llama_config(a, num_labels=1))


def llama_config(a, **kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                       num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                       max_position_embeddings=a.prompt_len + a.response_len + 8,
                       pad_token_id=0, eos_token_id=1, tie_word_embeddings=False, **kw)


def run_updates(roles, tok, cfg, a, batches, groups=None) -> tuple[dict[str, float], float, torch.Tensor]:
    """One update per batch of prompt ids, as the stage-3 loop runs it, answers of exactly
    response-len tokens (synthetic) or ending where they end (hh); returns (seconds by phase,
    wall seconds, each answer's tokens)."""
    phases = {"generate_s": 0.0, "score_s": 0.0, "train_s": 0.0}
    engine = None
    if a.rollout_engine == "vllm":  # started before the clock (its start-up is reported apart)
        from rlhf.config import VLLMConfig
        from rlhf.sampling.vllm_engine import VLLMEngine

        t = time.perf_counter()
        settings = VLLMConfig(enforce_eager=True if a.vllm_enforce_eager else None)
        engine = VLLMEngine(roles.policy, tok, settings, max_model_len=a.prompt_len + a.response_len + 1, dtype=a.dtype,
                            seed=a.seed)
        phases.update(engine_start_s=time.perf_counter() - t, sync_s=0.0)
    answer_lengths = []
    t0 = time.perf_counter()
    for batch in batches:
        sync(a)
        r = rollout(roles, tok, batch, cfg, max_new_tokens=a.response_len, groups=groups,
                    min_new_tokens=a.response_len if a.workload == "synthetic" else 0, sampler=engine)
        answer_lengths.append(r.mask.sum(1))
        phases["generate_s"] += r.seconds["generate"]
        phases["score_s"] += r.seconds["score"]
        t = time.perf_counter()
        update(roles, r, cfg, cfg.beta, pad_id=tok.pad_token_id)
        sync(a)
        phases["train_s"] += time.perf_counter() - t
        if engine is not None:  # the new weights into the engine, inside the clock: part of an update
            phases["sync_s"] += engine.sync(roles.policy)["time_sync_s"]
    wall = time.perf_counter() - t0
    return phases, wall, torch.cat(answer_lengths).long().cpu()


def sync(a) -> None:
    """Waits for the GPU's queued work, so that a phase's clock stops when its work is done."""
    if torch.device(a.device).type == "cuda":
        torch.cuda.synchronize(a.device)


def report(impl: str, a, phases: dict[str, float], wall: float, batches, answer_lengths: torch.Tensor) -> None:
    n = a.batch * a.updates
    gpu = {}
    if torch.device(a.device).type == "cuda":
        gpu = {"peak_gpu_mb": round(torch.cuda.max_memory_allocated(a.device) / 2**20, 1),
               "gpu": torch.cuda.get_device_name(a.device)}
    impl += "-vllm" if a.rollout_engine == "vllm" else ""
    print(json.dumps({"impl": impl, "episodes": n, "updates": a.updates, "wall_s": round(wall, 3),
                      "episodes_per_s": round(n / wall, 3),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **gpu,
                      "gen_tokens_per_s": round(int(answer_lengths.sum()) / phases["generate_s"], 1),
                      **{k: round(v, 3) for k, v in phases.items()},
                      **hh_figures(a, phases, wall, batches, answer_lengths),
                      "torch_threads": torch.get_num_threads(), "settings": vars(a)}))


def hh_figures(a, phases: dict[str, float], wall: float, batches, answer_lengths: torch.Tensor) -> dict:
    """Under hh: the real tokens per second, the answers' lengths, and each phase's share of the wall."""
    if a.workload != "hh":
        return {}
    prompt_tokens = sum(len(q) for batch in batches for q in batch)
    return {**hh_workload.throughput(prompt_tokens, int(answer_lengths.sum()), len(answer_lengths), wall),
            **hh_workload.spread(answer_lengths),
            **{f"{k}_share": round(phases[f"{k}_s"] / wall, 3) for k in ("generate", "score", "train")}}
