"""PPO's resumable checkpoints: <stage>/checkpoints/update_<N>/ with the policy and the value
engine's state under policy/ and value/ (without DeepSpeed: Hugging Face format, with LoRA the
adapters, plus optimizer.pt; with DeepSpeed: its own sharded checkpoint, every rank writing its
part), trainer_state.pt (KL controller, data position) and rng_rank<R>.pt (each rank's RNG).

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

from rlhf import distributed
from rlhf.config import ConfigError
from rlhf.ppo.engines import LocalEngine

KEEP = 2  # newest checkpoints kept


def _written_by(roles) -> str:
    """What wrote the model states: "zero<N>" (DeepSpeed's sharded format, whose ZeRO stage must
    match) or "none" (Hugging Face format)."""
    stage = roles.policy.zero_optimization_stage()
    return "none" if isinstance(roles.policy, LocalEngine) else f"zero{stage}"


def save_checkpoint(root: Path, roles, kl_ctl, state: dict) -> Path:
    """A collective: every rank calls it."""
    final = root / f"update_{state['update']}"
    tmp = final.with_name(final.name + ".tmp")
    if distributed.is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    roles.policy.save_checkpoint(tmp, tag="policy")
    roles.value.save_checkpoint(tmp, tag="value")
    torch.save({"torch_rng": torch.random.get_rng_state(), "python_rng": random.getstate()},
               tmp / f"rng_rank{distributed.rank()}.pt")
    if distributed.is_main_process():
        torch.save({"kl": kl_ctl.state_dict(), "state": dict(state), "format": _written_by(roles)},
                   tmp / "trainer_state.pt")
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


def load_latest(root: Path, roles, kl_ctl, state: dict) -> Path | None:
    """Restores everything from the newest complete checkpoint; None when there is none."""
    checkpoints = _complete(root) if root.exists() else []
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    saved = torch.load(latest / "trainer_state.pt", weights_only=True)
    if saved.get("format", "none") != _written_by(roles):
        raise ConfigError(f"{latest} was written with DeepSpeed ZeRO setting {saved.get('format', 'none')!r}, this "
                          f"run uses {_written_by(roles)!r}: resume with the deepspeed= setting that wrote it, or "
                          "choose another run= name")
    roles.policy.load_checkpoint(latest, tag="policy")
    roles.value.load_checkpoint(latest, tag="value")
    kl_ctl.load_state_dict(saved["kl"])
    state.update(saved["state"])
    rng = latest / f"rng_rank{distributed.rank()}.pt"
    if rng.exists():  # absent when resuming on more ranks than wrote the checkpoint
        rng_state = torch.load(rng, weights_only=True)
        torch.random.set_rng_state(rng_state["torch_rng"])
        random.setstate(rng_state["python_rng"])
    return latest
