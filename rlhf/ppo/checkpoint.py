"""Resumable PPO checkpoints: <stage>/checkpoints/update_<N>/ with the policy and value in
Hugging Face format (with LoRA: their adapters) and trainer_state.pt (optimizers, KL controller,
data position, RNG).

Written to update_<N>.tmp and renamed, so a folder without the suffix is complete; loaded with
torch.load(weights_only=True), which refuses pickled code."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlhf.artifacts import is_main_process

KEEP = 2  # newest checkpoints kept


def save_checkpoint(root: Path, roles, policy_opt, value_opt, kl_ctl, state: dict) -> Path | None:
    if not is_main_process():
        return None
    final = root / f"update_{state['update']}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    roles.policy.save_pretrained(tmp / "policy")
    roles.value.save_pretrained(tmp / "value")
    torch.save({"policy_opt": policy_opt.state_dict(), "value_opt": value_opt.state_dict(),
                "kl": kl_ctl.state_dict(), "state": dict(state), "torch_rng": torch.random.get_rng_state(),
                "python_rng": random.getstate()}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _complete(root)[:-KEEP]:
        shutil.rmtree(old)
    return final


def _complete(root: Path) -> list[Path]:
    found = [p for p in root.glob("update_*") if re.fullmatch(r"update_\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def load_latest(root: Path, roles, policy_opt, value_opt, kl_ctl, state: dict) -> Path | None:
    """Restores everything from the newest complete checkpoint; None when there is none."""
    checkpoints = _complete(root) if root.exists() else []
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    for model, name in ((roles.policy, "policy"), (roles.value, "value")):
        adapter = latest / name / "adapter_model.safetensors"
        if adapter.exists():  # LoRA: the adapter (and score head); the base is the frozen checkpoint loaded
            from peft import set_peft_model_state_dict

            unexpected = set_peft_model_state_dict(model, load_file(adapter)).unexpected_keys
            if unexpected:
                raise RuntimeError(f"{latest / name}: does not match the model (unexpected {unexpected})")
            continue
        missing, unexpected = model.load_state_dict(load_file(latest / name / "model.safetensors"), strict=False)
        tied = {k for k in missing if "lm_head" in k and getattr(model.config, "tie_word_embeddings", False)}
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"{latest / name}: does not match the model (missing {missing}, unexpected {unexpected})")
    saved = torch.load(latest / "trainer_state.pt", weights_only=True)
    policy_opt.load_state_dict(saved["policy_opt"])
    value_opt.load_state_dict(saved["value_opt"])
    kl_ctl.load_state_dict(saved["kl"])
    state.update(saved["state"])
    torch.random.set_rng_state(saved["torch_rng"])
    random.setstate(saved["python_rng"])
    return latest
