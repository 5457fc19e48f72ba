"""What a stage's result depends on, as one hash: the settings that change it and the content of
what it read. `rlhf stage=pipeline` skips a stage whose manifest holds the same fingerprint and
whose output exists, and reruns it (and, through the hashes, every stage after it) otherwise.

Left out of the fingerprint, because they change how a stage runs, not what it computes:
`deepspeed`, `logger`, `run`, `runs_dir`, and the other stages' sections.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from omegaconf import OmegaConf

from rlhf.core.artifacts import sha256_of
from rlhf.config import RLHFConfig
from rlhf.data import describe_source
from rlhf.stages import STAGES, output_path, resolve_inputs, stage_dir


def upstream(cfg: RLHFConfig, stage: str) -> dict[str, str]:
    """The models a stage reads, by role, as the stage registry resolves them (defaults included,
    whether or not they exist yet)."""
    found = {role: path or "tiny model" for role, path in resolve_inputs(cfg, stage, require=False).items()}
    dynamic = STAGES[stage].dynamic_inputs
    return {**found, **(dynamic(cfg) if dynamic else {})}


def content_id(path: str) -> str:
    """An input's identity: a file's fresh content hash (a collected file a person may have ranked
    since it was written), the output hash its stage recorded (a folder this package wrote), a
    fresh hash of a local folder otherwise, or the hub id as given."""
    p = Path(path)
    if p.is_file():
        return sha256_of(p)
    manifest = p.parent / "manifest.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text()).get("outputs", {}).get("sha256")
        if recorded and p.exists():
            return recorded
    if p.exists():
        return sha256_of(p)
    return path


def fingerprinted_sections(stage: str) -> tuple[str, ...]:
    """The config sections whose settings decide a stage's output."""
    return ("seed", "model", "data", STAGES[stage].section, *STAGES[stage].also_reads)


def fingerprint(cfg: RLHFConfig, stage: str) -> dict:
    """{"sha256": ..., "inputs": {...}}: the hash over the stage's settings and inputs."""
    settings = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    sections = fingerprinted_sections(stage)
    relevant = {k: settings[k] for k in sections if k in settings}
    inputs = {"data": describe_source(cfg.data),
              **{role: {"path": path, "content": content_id(path)} for role, path in upstream(cfg, stage).items()}}
    blob = json.dumps({"settings": relevant, "inputs": inputs}, sort_keys=True, default=str)
    return {"sha256": hashlib.sha256(blob.encode()).hexdigest(), "inputs": inputs}


def output_hash(cfg: RLHFConfig, stage: str) -> str | None:
    out = output_path(cfg, stage)
    return sha256_of(out) if out.exists() else None


def recorded(cfg: RLHFConfig, stage: str) -> dict:
    manifest = stage_dir(cfg, stage) / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.exists() else {}


def up_to_date(cfg: RLHFConfig, stage: str, expected: str) -> bool:
    found = recorded(cfg, stage)
    return (output_path(cfg, stage).exists() and found.get("status") == "completed"
            and found.get("fingerprint") == expected)


# Settings that say how long or how often, not what: a stage with only these changed continues
# from its checkpoints (more updates or epochs extend a run) instead of counting as another run.
CONTINUABLE = re.compile(r"^[a-z_]+\.(updates|epochs|max_steps|eval_every_\w+|save_every_\w+|save_total_limit)$")


def changed_settings(cfg: RLHFConfig, stage: str, composed) -> dict[str, str]:
    """The settings that differ between the run the stage's folder holds and this one: dotted
    keys of the fingerprint's sections, each with both values."""
    folder = stage_dir(cfg, stage)
    if not (folder / "config.yaml").exists():
        return {}
    sections = fingerprinted_sections(stage)
    before = _flat(OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=False))
    now = _flat(OmegaConf.to_container(composed, resolve=True, enum_to_str=True))
    keys = sorted(k for k in set(before) | set(now)
                  if k.split(".")[0] in sections and before.get(k) != now.get(k))
    return {k: f"{k}: {before.get(k, '-')} -> {now.get(k, '-')}" for k in keys}


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat
