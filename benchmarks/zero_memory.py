#!/usr/bin/env python3
"""Per-rank bytes of parameters, gradients and optimizer state under DeepSpeed ZeRO-0, -2 and -3;
prints one JSON line.

Two ranks (torchrun, gloo; no GPU needed) train the tiny model one step per stage with the
project's own DeepSpeed settings (conf/deepspeed/zero2.yaml, zero3.yaml, filled in by
rlhf.core.distributed.engine_config; stage 0 is a plain engine) and a client AdamW. `--dtype bfloat16`
(the default) is mixed precision as GPU training runs it: bf16 weights and gradients, fp32 master
weights and Adam moments (the ZeRO paper's 2+2+12 bytes a parameter); `--dtype float32` trains in
fp32, where DeepSpeed still keeps an fp32 master partition at stage 2/3. Every number is read
off the tensors DeepSpeed really holds, not a formula: gradients after backward and before step,
parameters and optimizer state (Adam moments plus DeepSpeed's fp32 master partition) after step.
Bytes are the union of the tensors' memory ranges, so views, tied weights and a master copy that
is the parameters' own storage are counted once. Transient buffers (a ZeRO-3 forward's gathered
weights, reduce buckets) are not: this is what each rank keeps between steps. Beside the totals,
each rank reports `optimizer` (DeepSpeed's optimizer class), `grad_numel` (gradient elements
held, for the check below), `persistent_param_bytes` (ZeRO-3 parameters small enough to stay
whole on every rank, included in param_bytes) and `master_bytes` (the fp32 master copy, included
in optim_bytes).

    .venv/bin/python benchmarks/zero_memory.py [--dtype {float32,bfloat16}]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

WORLD = 2
STAGES = (0, 2, 3)
TIMEOUT_S = 300  # a crashed or hung rank must not hang the caller
MARK = "ZERO_MEMORY_JSON "
ROOT = Path(__file__).resolve().parent.parent


def held_bytes(tensors, exclude=()) -> int:
    """Bytes covered by `tensors`' memory ranges and not by `exclude`'s (each range counted once)."""
    def union(ts):
        spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in ts if t.numel())
        total, end = 0, 0
        for lo, hi in spans:
            total += max(0, hi - max(lo, end))
            end = max(end, hi)
        return total
    exclude = list(exclude)
    return union(list(tensors) + exclude) - union(exclude)


def ds_config(stage: int, model, dtype: str) -> dict:
    from rlhf.core import distributed

    base = ({"zero_optimization": {"stage": 0}} if stage == 0 else
            OmegaConf.to_container(OmegaConf.load(ROOT / f"conf/deepspeed/zero{stage}.yaml").config))
    return distributed.engine_config(base, model, batch_size=WORLD, micro_batch_size_per_device=1,
                                     max_grad_norm=1.0, dtype=dtype, train=True)


def measure(stage: int, tok, dtype: str) -> dict:
    import deepspeed

    from rlhf.config import ModelConfig
    from rlhf.models import build_tiny_model

    # Fresh weights per stage, in the training dtype; deepspeed.initialize partitions them.
    model = build_tiny_model(ModelConfig(), tok).to(getattr(torch, dtype))
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
                                      config=ds_config(stage, model, dtype))
    # Stage 0: fp32, the AdamW itself; bf16, FP16_UnfusedOptimizer (DeepSpeed's "DDP_BFLOAT16" path:
    # without zero, bf16 and no fp32 grad_accum_dtype it picks this, not BF16_Optimizer). Stage 2/3:
    # DeepSpeed's ZeRO wrapper around the AdamW.
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)  # the torch AdamW whose .state holds the moments
    params = list(engine.module.parameters())
    x = torch.randint(2, len(tok), (1, 32), generator=torch.Generator().manual_seed(engine.global_rank))

    engine.backward(engine(input_ids=x, labels=x).loss)
    # Gradients held between backward and step, in the model dtype at every stage (DeepSpeed's
    # gradient_accumulation_dtype defaults to it). ZeRO-0: each p.grad (whole, all-reduced); in bf16
    # FP16_UnfusedOptimizer makes fp32 copies only inside step (fp32_groups' .grad, freed there).
    # ZeRO-2: stage_1_and_2 keeps this rank's reduced partition in `averaged_gradients[group]` (a
    # list of views into its contiguous `grads_in_partition` buffer) and sets p.grad to None.
    # ZeRO-3: stage3 keeps it in `grad_partitions_flat_buffer`, listed per parameter in
    # `averaged_gradients[sub_group]`. p.grad / p.grad_accum are added in case any survive.
    grads = [g for p in params for g in (p.grad, getattr(p, "grad_accum", None)) if g is not None]
    for group in getattr(opt, "averaged_gradients", {}).values():
        grads += [group] if torch.is_tensor(group) else list(group or [])
    grad_bytes = held_bytes(grads)
    grad_numel = sum(held_bytes([g for g in grads if g.dtype == d]) // d.itemsize  # elements, per dtype
                     for d in {g.dtype for g in grads})
    engine.step()

    # Parameters held: ZeRO-3 keeps this rank's shard in p.ds_tensor (p.data is emptied), except
    # "persistent" parameters below stage3_param_persistence_threshold, whose p.data stays whole
    # beside the shard; ZeRO-0/2 hold every parameter whole (views into one flat buffer at stage 2).
    shards = [p.ds_tensor for p in params if hasattr(p, "ds_tensor")]
    whole = [p.data for p in params]  # numel 0 for a released ZeRO-3 parameter
    persistent_bytes = held_bytes(whole) if shards else 0
    param_tensors = shards + whole
    # Optimizer state: the AdamW's per-parameter state (exp_avg, exp_avg_sq, step; fp32, as the
    # AdamW steps the fp32 master), plus the fp32 master DeepSpeed updates: in bf16 at stage 0,
    # FP16_UnfusedOptimizer's `fp32_groups` (a whole fp32 clone of each parameter); at stage 2/3 the
    # partition, stage_1_and_2's `single_partition_of_fp32_groups` or stage3's
    # `fp32_partitioned_groups_flat`. These are clones even for an fp32 model (stage3 would reuse
    # the shards' buffer, but its check compares a tensor's torch.device with the string
    # 'cpu'/'cuda:N', which is never equal); `exclude` keeps that honest should it ever be shared.
    state = [v for s in inner.state.values() for v in s.values() if torch.is_tensor(v)]
    masters = [p for group in getattr(opt, "fp32_groups", []) for p in group] + \
        list(getattr(opt, "single_partition_of_fp32_groups", [])) + \
        list(getattr(opt, "fp32_partitioned_groups_flat", []))
    row = {"rank": engine.global_rank, "optimizer": type(opt).__name__,
           "param_bytes": held_bytes(param_tensors), "grad_bytes": grad_bytes, "grad_numel": grad_numel,
           "optim_bytes": held_bytes(state + masters, exclude=param_tensors)}
    row["total_bytes"] = row["param_bytes"] + row["grad_bytes"] + row["optim_bytes"]
    row["persistent_param_bytes"] = persistent_bytes
    row["master_bytes"] = held_bytes(masters, exclude=param_tensors)
    engine.destroy()
    del engine, opt, inner, model, params, grads, shards, whole, param_tensors, state, masters
    gc.collect()
    return row


def worker(dtype: str) -> None:
    from rlhf.core import distributed
    from rlhf.config import ModelConfig
    from rlhf.models import build_tiny_model, build_tiny_tokenizer

    torch.set_num_threads(1)
    distributed.init(use_deepspeed=True)
    tok = build_tiny_tokenizer()
    model = build_tiny_model(ModelConfig(), tok)
    numel = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    out = {"world_size": WORLD, "model": {"numel": numel, "dtype": dtype, **vars(ModelConfig().tiny)}}
    for stage in STAGES:
        ranks: list = [None] * WORLD
        torch.distributed.all_gather_object(ranks, measure(stage, tok, dtype))
        out[f"zero{stage}"] = {"ranks": ranks, "total_bytes_max_rank": max(r["total_bytes"] for r in ranks)}
        # Check the gradient reading: ZeRO-2/3 ranks each hold a disjoint share of one full set of
        # gradients (up to alignment padding), ZeRO-0 ranks a full set each.
        grad_numel = sum(r["grad_numel"] for r in ranks)
        expected = numel * (WORLD if stage == 0 else 1)
        assert expected <= grad_numel <= expected + 64 * WORLD, (stage, grad_numel, expected)
    for stage in (3, 2):
        out[f"ratio_zero{stage}_to_zero0"] = round(
            out[f"zero{stage}"]["total_bytes_max_rank"] / out["zero0"]["total_bytes_max_rank"], 4)
    if torch.distributed.get_rank() == 0:
        print(MARK + json.dumps(out), flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16",
                        help="training dtype (default bfloat16: bf16 weights/grads, fp32 master and moments)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.dtype)
        sys.exit(0)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
           __file__, "--worker", "--dtype", args.dtype]
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.terminate()  # torchrun passes SIGTERM on to its ranks (each in a session of its own)
        out, err = child.communicate(timeout=60)
        sys.exit(f"zero_memory: ranks still running after {TIMEOUT_S} s; stopped\n{err[-4000:]}")
    lines = [ln[len(MARK):] for ln in out.splitlines() if ln.startswith(MARK)]
    if child.returncode or not lines:
        sys.exit(f"zero_memory: ranks failed (exit {child.returncode})\n{err[-4000:]}")
    print(lines[-1])
