"""Stage 3's resumable checkpoints: <stage>/checkpoints/update_<N>/ with each trained engine's
state under policy/ and value/ (the critic, when there is one; without DeepSpeed: Hugging Face
format, with LoRA the adapters, plus optimizer.pt; with DeepSpeed: its own sharded checkpoint,
every rank writing its part), trainer_state.pt (update count, KL controller, prompt position)
and rng_rank<R>.pt (each rank's RNG).

Written to update_<N>.tmp and renamed once every rank has finished, so a folder without the
suffix is complete. Our own files load with torch.load(weights_only=True), which refuses pickled
code; DeepSpeed reads its own shards (written by this run) with its own loader.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import torch

from rlhf.config import ConfigError
from rlhf.core import distributed
from rlhf.stages.online_rl.roles import LocalEngine, Roles

KEEP = 2  # newest checkpoints kept


def _written_by(roles: Roles) -> str:
    """What wrote the model states: "zero<N>" (DeepSpeed's sharded format, whose ZeRO stage must
    match) or "none" (Hugging Face format)."""
    stage = roles.policy.zero_optimization_stage()
    return "none" if isinstance(roles.policy, LocalEngine) else f"zero{stage}"


def save_checkpoint(root: Path, roles: Roles, update: int, trainer_state: dict) -> Path:
    """A collective: every rank calls it. `trainer_state`: small picklable-free values (the KL
    controller's and the prompt stream's state dicts)."""
    final = root / f"update_{update}"
    tmp = final.with_name(final.name + ".tmp")
    if distributed.is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    for tag, engine in roles.trained().items():
        engine.save_checkpoint(tmp, tag=tag)
    torch.save({"torch_rng": torch.random.get_rng_state(), "python_rng": random.getstate()},
               tmp / f"rng_rank{distributed.rank()}.pt")
    if distributed.is_main_process():
        torch.save({"update": update, **trainer_state, "format": _written_by(roles)}, tmp / "trainer_state.pt")
    distributed.barrier()
    if distributed.is_main_process():
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _complete(root)[:-KEEP]:
            shutil.rmtree(old)
    distributed.barrier()
    return final


def _complete(root: Path) -> list[Path]:
    found = [p for p in root.glob("update_*") if re.fullmatch(r"update_\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def load_latest(root: Path, roles: Roles) -> tuple[Path, dict] | None:
    """Restores the engines and this rank's RNG from the newest complete checkpoint and returns
    (its path, the trainer_state it was saved with); None when there is none."""
    checkpoints = _complete(root) if root.exists() else []
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    saved = torch.load(latest / "trainer_state.pt", weights_only=True)
    if saved.get("format", "none") != _written_by(roles):
        raise ConfigError(f"{latest} was written with DeepSpeed ZeRO setting {saved.get('format', 'none')!r}, this "
                          f"run uses {_written_by(roles)!r}: resume with the deepspeed= setting that wrote it, or "
                          "choose another run= name")
    for tag, engine in roles.trained().items():
        if not (latest / tag).exists():
            raise ConfigError(f"{latest} holds no {tag}/ state, which this run trains (was it written with another "
                              "ppo.advantage?): choose another run= name, or the setting that wrote it")
        engine.load_checkpoint(latest, tag=tag)
    rng = latest / f"rng_rank{distributed.rank()}.pt"
    if rng.exists():  # absent when resuming on more ranks than wrote the checkpoint
        rng_state = torch.load(rng, weights_only=True)
        torch.random.set_rng_state(rng_state["torch_rng"])
        random.setstate(rng_state["python_rng"])
    return latest, saved
