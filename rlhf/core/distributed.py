"""The one module that knows about ranks, launchers and DeepSpeed.

Every launcher (torchrun, the `deepspeed` launcher, `accelerate launch`, `srun`) starts the same
`rlhf ...` command once per rank. They all leave RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT in the environment except srun, whose SLURM_* variables `adopt_launcher_env` maps
onto them, and the deepspeed launcher, which also appends `--local_rank=N` to the arguments
(Hydra would take it for an override). One process without DeepSpeed starts no process group.

DeepSpeed: `deepspeed=none|zero2|zero3|zero3_offload` picks conf/deepspeed/<name>.yaml, a
DeepSpeed JSON config as YAML. SFT and RM hand it to the transformers Trainer, which fills the
"auto" values from the stage's settings; PPO drives DeepSpeed itself and fills them here
(`engine_config`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import subprocess
from typing import Any

import torch


# ---- ranks ----

def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def device() -> torch.device:
    """Where this rank computes: its GPU (cuda:LOCAL_RANK, one per rank as torchrun and srun
    place them) when CUDA is present, else the CPU. Every stage puts its models here; the
    Trainer-based stages get the same from transformers, and DeepSpeed's engines place
    themselves on it too."""
    return torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")


def is_main_process() -> bool:
    """Rank 0, the only one that writes manifests, logs and final models; True when run alone."""
    return rank() == 0


def adopt_launcher_env(argv: list[str]) -> list[str]:
    """The arguments without the deepspeed launcher's `--local_rank=N` (moved to LOCAL_RANK), and
    under srun (one task per GPU, no torchrun) the torch.distributed variables from Slurm's."""
    kept = []
    args = iter(argv)
    for a in args:
        if a.startswith(("--local_rank", "--local-rank")):
            value = a.split("=", 1)[1] if "=" in a else next(args, "0")
            os.environ.setdefault("LOCAL_RANK", value)
        else:
            kept.append(a)
    env = os.environ
    if "SLURM_PROCID" in env and "RANK" not in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", _first_slurm_host())
        # One port per job, so two jobs sharing a node do not collide.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    return kept


def _first_slurm_host() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "localhost"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return nodes.split(",")[0]  # a plain list of names (no brackets) needs no scontrol


def init(use_deepspeed: bool) -> None:
    """Starts the process group when launched with more than one rank (NCCL on GPUs, gloo on
    CPUs), or for DeepSpeed even alone (it needs one; without a launcher's variables it would look
    for MPI). Idempotent."""
    if torch.distributed.is_initialized() or (world_size() == 1 and not use_deepspeed):
        return
    if world_size() == 1:  # a one-rank group on this machine
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", str(_free_port()))):
            os.environ.setdefault(key, value)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    if use_deepspeed:
        import deepspeed
        import deepspeed.ops
        # ZeRO-3 loading (zero.Init) patches tensor constructors; torch imports this module
        # lazily, and its check of their signatures fails if that happens inside the patch.
        importlib.import_module("torch._dynamo.polyfills.tensor")

        if not torch.cuda.is_available():
            # DeepSpeed's CPU backend JIT-compiles a shared-memory collective op (~100 s) on
            # first use; it only serves tensor-parallel inference, which we do not use.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=backend)
    else:
        torch.distributed.init_process_group(backend)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def gather_objects(items: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank."""
    if not torch.distributed.is_initialized():
        return list(items)
    everyone: list = [None] * world_size()
    torch.distributed.all_gather_object(everyone, items)
    return [x for part in everyone for x in part]


def mean_over_ranks(stats: dict[str, float]) -> dict[str, float]:
    """Each value averaged across ranks (every rank must pass the same keys)."""
    if not torch.distributed.is_initialized():
        return stats
    keys = sorted(stats)
    t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, (t / world_size()).tolist()))


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


# ---- DeepSpeed ----

def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0)) if ds_config else -1


def offloads_optimizer(ds_config: dict) -> bool:
    device = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device not in (None, "none")


def engine_config(ds_config: dict, model, *, batch_size: int, micro_batch_size_per_device: int,
                  max_grad_norm: float, dtype: str, train: bool) -> dict:
    """`ds_config` with its "auto" values filled for a model PPO drives itself, as the Trainer
    integration fills them for SFT and RM. `model`: the model or its transformers config.
    `batch_size` is global (all ranks): the episodes of one optimizer step."""
    per_rank = batch_size // world_size()
    c = copy.deepcopy(ds_config)
    c["train_micro_batch_size_per_gpu"] = micro_batch_size_per_device
    c["gradient_accumulation_steps"] = max(1, per_rank // micro_batch_size_per_device)
    c["train_batch_size"] = micro_batch_size_per_device * c["gradient_accumulation_steps"] * world_size()
    c["gradient_clipping"] = max_grad_norm
    c.setdefault("bf16", {})["enabled"] = dtype == "bfloat16"
    c.setdefault("fp16", {})["enabled"] = dtype == "float16"
    c["zero_allow_untested_optimizer"] = True
    c.pop("optimizer", None)  # PPO builds its optimizers (two learning rates, one per role)
    c.pop("scheduler", None)
    hidden = getattr(getattr(model, "config", model), "hidden_size", None)
    zero = c.setdefault("zero_optimization", {})
    for key, value in (("reduce_bucket_size", hidden * hidden if hidden else 5e8),
                       ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden) if hidden else 5e8),
                       ("stage3_param_persistence_threshold", 10 * hidden if hidden else 1e5)):
        if zero.get(key) == "auto":
            zero[key] = value
    if not train:  # a frozen model: ZeRO-3 shards its weights, nothing else applies
        c["zero_optimization"] = {k: v for k, v in zero.items() if not k.startswith("offload_optimizer")}
        if zero_stage(c) != 3:
            c["zero_optimization"]["stage"] = 0
    leftover = [k for k, v in _flatten(c) if v == "auto"]
    if leftover:
        raise ValueError(f"deepspeed.config: no value for {leftover} (\"auto\" is filled only for the keys the "
                         "transformers integration knows); set them in conf/deepspeed/<name>.yaml")
    return c


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@contextlib.contextmanager
def sharded_loading(ds_config: dict, model_path: str, dtype: str, trust_remote_code: bool = False):
    """Under ZeRO-3, models loaded inside come out sharded (transformers' zero.Init integration):
    each rank reads only its share, rather than every rank holding whole copies of every model
    until DeepSpeed partitions them. Elsewhere a no-op. `model_path`: a checkpoint whose config
    sizes the ZeRO-3 buckets as the engines will."""
    if not ds_config or zero_stage(ds_config) != 3:
        yield
        return
    from transformers import AutoConfig
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    model_config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    config = engine_config(ds_config, model_config, batch_size=world_size(), micro_batch_size_per_device=1,
                           max_grad_norm=1.0, dtype=dtype, train=False)
    active = HfDeepSpeedConfig(config)  # transformers keeps only a weak reference to it
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del active


def initialize(model, ds_config: dict, optimizer=None):
    """A DeepSpeed engine around `model` (trained when `optimizer` is given)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


def is_engine(model) -> bool:
    """A DeepSpeed engine, or PPO's LocalEngine, which offers the same interface."""
    return hasattr(model, "zero_optimization_stage")


def module_of(model):
    """The model inside a DeepSpeed engine (or the model itself)."""
    return model.module if is_engine(model) else model


def _is_zero3(model) -> bool:
    return is_engine(model) and model.zero_optimization_stage() == 3


@contextlib.contextmanager
def full_weights(model):
    """The plain module with every parameter present on this rank. Under ZeRO-3 the shards are
    gathered once here and the per-layer fetch hooks are lifted for the duration, so that
    generation does not fetch every layer again for every token, and so that ranks may run
    different numbers of forward passes (a hooked forward is a collective)."""
    if not _is_zero3(model):
        yield module_of(model)
        return
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(list(model.module.parameters())):
        remove_hooks(model)
        try:
            yield model.module
        finally:
            add_hooks(model)


def consolidated_state_dict(model) -> dict[str, torch.Tensor] | None:
    """The full state dict for saving: under ZeRO-3 gathered layer by layer onto rank 0 (a
    collective: every rank calls it; the others get None)."""
    if _is_zero3(model):
        state = model._zero3_consolidated_16bit_state_dict()  # what accelerate and the Trainer call
        return state if is_main_process() else None
    return module_of(model).state_dict() if is_main_process() else None


def sharding_report(model) -> dict[str, Any]:
    """This rank's share of a model's state, in elements: the parameters it holds, their
    gradients' partition and the optimizer state. The evidence that ZeRO really shards."""
    module = module_of(model)
    params = list(module.parameters())
    total = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in params if p.requires_grad)
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    optim = 0
    opt = getattr(model, "optimizer", None) if is_engine(model) else None
    for holder in (getattr(opt, "optimizer", None), opt):
        if holder is not None and hasattr(holder, "state") and isinstance(holder.state, dict) and holder.state:
            optim = sum(v.numel() for s in holder.state.values() for v in s.values() if torch.is_tensor(v))
            break
    # (unsharded, Adam holds two values per trainable parameter: 2 x trainable_numel)
    return {"param_numel_total": total, "trainable_numel": trainable, "param_numel_held": held,
            "optimizer_state_numel": optim}


# ---- gradient checkpointing (a memory setting, beside the sharding ones) ----
# transformers 5 renamed it activation checkpointing (the old names warn); 4.x has only the old.

def enable_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant: works with frozen inputs, LoRA
    and DeepSpeed's hooks); active in training mode only."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_checkpointing(model) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        try:
            return bool(getattr(model, name))
        except AttributeError:
            continue
    return False


def describe(model, cfg) -> dict[str, Any]:
    """For the manifest: how the stage ran, and every rank's share of the trained model's state
    (a collective: every rank calls it)."""
    return {"world_size": world_size(), "deepspeed": cfg.deepspeed.name,
            "zero_stage": zero_stage(cfg.deepspeed.config) if cfg.deepspeed.name != "none" else None,
            # what the model really did, not what was asked (a frozen role never checkpoints)
            "gradient_checkpointing": is_checkpointing(module_of(model)),
            "ranks": gather_objects([{"rank": rank(), **sharding_report(model)}])}
