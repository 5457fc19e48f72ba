"""What a stage's result depends on, as one hash: the settings that change it and the content of
what it read. `rlhf stage=pipeline` skips a stage whose manifest holds the same fingerprint and
whose output exists, and reruns it (and, through the hashes, every stage after it) otherwise.

Left out of the fingerprint, because they change how a stage runs, not what it computes:
`deepspeed`, `logger`, `run`, `runs_dir`, and the other stages' sections.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from rlhf.artifacts import sha256_of
from rlhf.config import RLHFConfig
from rlhf.data import describe_source

# What each stage's result is (its existence is the first condition for skipping it).
OUTPUTS = {"sft": "final", "rm": "final", "ppo": "final", "compare": "report.md"}


def upstream(cfg: RLHFConfig, stage: str) -> dict[str, str]:
    """The models a stage reads, by role (None where a setting picks the default below)."""
    run_dir = cfg.run_dir
    if stage == "sft":
        return {"init_from": cfg.sft.init_from or cfg.model.name_or_path or "tiny model"}
    if stage == "rm":
        return {"init_from": cfg.rm.init_from or str(run_dir / "sft" / "final")}
    if stage == "ppo":
        reward = cfg.ppo.reward_from or str(run_dir / "rm" / "final")
        return {"policy_from": cfg.ppo.policy_from or str(run_dir / "sft" / "final"), "reward_from": reward,
                "value_from": cfg.ppo.value_from or reward}
    if stage == "compare":
        c = cfg.compare
        found = {"reward_from": c.reward_from or str(run_dir / "rm" / "final"),
                 "reference_from": c.reference_from or str(run_dir / "sft" / "final")}
        policies = c.policies or {"sft": str(run_dir / "sft" / "final"), "ppo": str(run_dir / "ppo" / "final")}
        found.update({f"policy:{k}": v for k, v in sorted(policies.items())})
        return found
    return {}


def content_id(path: str) -> str:
    """A model's identity: the output hash its stage recorded (a folder this package wrote), a
    fresh hash of a local folder otherwise, or the hub id as given."""
    p = Path(path)
    manifest = p.parent / "manifest.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text()).get("outputs", {}).get("sha256")
        if recorded and p.exists():
            return recorded
    if p.exists():
        return sha256_of(p)
    return path


def fingerprint(cfg: RLHFConfig, stage: str) -> dict:
    """{"sha256": ..., "inputs": {...}}: the hash over the stage's settings and inputs."""
    settings = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    relevant = {k: settings[k] for k in ("seed", "model", "data", stage) if k in settings}
    inputs = {"data": describe_source(cfg.data),
              **{role: {"path": path, "content": content_id(path)} for role, path in upstream(cfg, stage).items()}}
    blob = json.dumps({"settings": relevant, "inputs": inputs}, sort_keys=True, default=str)
    return {"sha256": hashlib.sha256(blob.encode()).hexdigest(), "inputs": inputs}


def output_hash(cfg: RLHFConfig, stage: str) -> str | None:
    out = cfg.run_dir / stage / OUTPUTS[stage]
    return sha256_of(out) if out.exists() else None


def recorded(cfg: RLHFConfig, stage: str) -> dict:
    manifest = cfg.run_dir / stage / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.exists() else {}


def up_to_date(cfg: RLHFConfig, stage: str, expected: str) -> bool:
    found = recorded(cfg, stage)
    return ((cfg.run_dir / stage / OUTPUTS[stage]).exists() and found.get("status") == "completed"
            and found.get("fingerprint") == expected)
