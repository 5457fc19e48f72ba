"""The checks of where and how models compute: the attention kernel, stage 3's rollout engine, a
GGUF source, LoRA and DeepSpeed's ZeRO stage. The first two look at the machine (is a package
installed, is there a GPU), which the other sections' checks never do."""

from __future__ import annotations

from rlhf import stages
from rlhf.config import RLHFConfig


ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def attention_problems(m) -> list[str]:
    """model.attn_implementation: a kernel transformers has, and for flash_attention_2 the
    package, a GPU and a half-precision dtype, refused here rather than deep inside loading."""
    import importlib.util

    import torch

    setting = f"model.attn_implementation={m.attn_implementation!r}"
    if m.attn_implementation not in ATTN_IMPLEMENTATIONS:
        return [f"{setting}: choose one of {', '.join(ATTN_IMPLEMENTATIONS)}"]
    if m.attn_implementation != "flash_attention_2":
        return []
    if importlib.util.find_spec("flash_attn") is None:
        return [f"{setting} needs the flash-attn package, which is not installed here: pip install flash-attn "
                "--no-build-isolation on the CUDA machine, or use model.attn_implementation=sdpa"]
    if not torch.cuda.is_available():
        return [f"{setting} runs on CUDA GPUs only and none is visible here; use model.attn_implementation=sdpa"]
    if m.dtype == "float32":
        return [f"{setting} needs model.dtype=bfloat16 or float16 (it has no float32 kernel)"]
    return []


ROLLOUT_ENGINES = ("hf", "vllm")


def rollout_engine_problems(cfg, runs_stage3: bool) -> list[str]:
    """ppo.rollout_engine and the vllm section; a missing vLLM is refused before a pipeline
    spends its SFT and RM time, not when stage 3 starts."""
    import importlib.util

    p, v = cfg.ppo, cfg.vllm
    problems = []
    if p.rollout_engine not in ROLLOUT_ENGINES:
        problems.append(f"ppo.rollout_engine={p.rollout_engine!r}: choose one of {', '.join(ROLLOUT_ENGINES)}")
    if p.tis_cap is not None and p.tis_cap < 1:
        problems.append(f"ppo.tis_cap={p.tis_cap}: must be >= 1 (it caps pi_policy / pi_engine), or null for off")
    if p.tis_cap is not None and p.rollout_engine != "vllm":
        problems.append(f"ppo.tis_cap={p.tis_cap} corrects the vLLM engine's mismatch with the policy: it needs "
                        "ppo.rollout_engine=vllm (the hf engine samples from the policy itself)")
    if not 0.0 < v.gpu_memory_utilization <= 1.0:
        problems.append(f"vllm.gpu_memory_utilization={v.gpu_memory_utilization}: must lie in (0, 1]")
    if v.sleep_level not in (0, 1, 2):
        problems.append(f"vllm.sleep_level={v.sleep_level}: choose 0 (off), 1 or 2")
    for key in ("kv_cache_mib", "max_num_seqs"):
        if getattr(v, key) is not None and getattr(v, key) < 1:
            problems.append(f"vllm.{key}={getattr(v, key)}: must be >= 1 (or null)")
    if runs_stage3 and p.rollout_engine == "vllm" and importlib.util.find_spec("vllm") is None:
        problems.append("ppo.rollout_engine=vllm needs vLLM, which is not installed in this environment: "
                        "`make setup-vllm` builds .venv-vllm with it (docs/vllm.md), or use ppo.rollout_engine=hf")
    return problems


def runtime_problems(cfg: RLHFConfig) -> list[str]:
    """Where and how the models compute: the attention kernel, stage 3's rollout engine, a GGUF
    source, LoRA and DeepSpeed's ZeRO stage."""
    lora = cfg.model.lora
    problems = attention_problems(cfg.model)
    problems += rollout_engine_problems(cfg, runs_stage3=cfg.stage.name in ("ppo", stages.CHAIN))
    if (cfg.model.gguf_package is None) != (cfg.model.gguf_file is None):
        problems.append("model.gguf_package and model.gguf_file go together: set both, or neither")
    if lora.enabled and (lora.r < 1 or lora.alpha <= 0):
        problems.append(f"model.lora.r={lora.r}, model.lora.alpha={lora.alpha}: both must be positive")
    ds = cfg.deepspeed
    if ds.name != "none":
        stage = (ds.config or {}).get("zero_optimization", {}).get("stage")
        if stage not in (0, 1, 2, 3):
            problems.append(f"deepspeed={ds.name}: deepspeed.config.zero_optimization.stage={stage!r}; choose 0-3")
        elif stage == 3 and lora.enabled:
            problems.append("model.lora.enabled=true with ZeRO-3 is not supported yet (the adapter merge needs the "
                            "whole weights on one rank): use deepspeed=zero2, whose parameters are whole on every rank")
        elif stage == 3 and cfg.ppo.ema_decay is not None:
            problems.append("ppo.ema_decay with ZeRO-3 is not supported (the EMA would average weight shards): "
                            "use deepspeed=zero2, or ppo.ema_decay=null")
    return problems
