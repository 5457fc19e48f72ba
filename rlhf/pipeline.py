"""Running stages: one (`rlhf stage=sft`) or a chain (`rlhf stage=pipeline`: by default every
pipeline stage of the registry in rlhf/stages/, sft -> rm -> ppo -> compare, in one run
directory; `stages=[rm,ppo]` for a part of it).

Every stage's manifest records its fingerprint (rlhf/lineage.py: the settings that shape its
result and the content hashes of what it read) and the hash of what it wrote. The pipeline skips
a stage whose output exists under the same fingerprint and says so; a changed setting or input
reruns it, and its new output hash changes the fingerprints of the stages after it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import importlib
import logging
import shutil

from omegaconf import DictConfig, open_dict

from rlhf import lineage, stages
from rlhf.config import RLHFConfig, StageConfig
from rlhf.core.artifacts import StageRun
from rlhf.core.distributed import barrier, is_main_process
from rlhf.core.runlock import run_lock

log = logging.getLogger("rlhf")


def run_stages(cfg: RLHFConfig, composed: DictConfig) -> None:
    pipeline = cfg.stage.name == stages.CHAIN
    names = (cfg.stages or stages.pipeline_stages(round=cfg.loop.round)) if pipeline else [cfg.stage.name]
    # One lock for the whole command, pipeline or one stage: a second command on the same run
    # stops at once, naming this one (unless nothing here writes in the run: generate).
    writes = any(stages.get(name).writes_run for name in names)
    with run_lock(cfg.run_dir, cfg.variant) if writes else contextlib.nullcontext():
        for name in names:
            stage = stages.get(name)
            stage_cfg = dataclasses.replace(cfg, stage=StageConfig(name=name))
            stage_composed = copy.deepcopy(composed)
            with open_dict(stage_composed):
                stage_composed.stage.name = name
            fingerprint = lineage.fingerprint(stage_cfg, name) if stage.output else None
            if pipeline and fingerprint:
                if lineage.up_to_date(stage_cfg, name, fingerprint["sha256"]):
                    log.info("%s: up to date (same settings and inputs as %s), skipped", name, stage_cfg.stage_dir)
                    continue
                _drop_stale_checkpoints(stage_cfg, name, fingerprint["sha256"])
            log.info("stage %s -> %s", name, stage_cfg.stage_dir)
            with StageRun(stage_cfg.stage_dir, stage_composed) as stage_run:
                if fingerprint:
                    stage_run.manifest.update(fingerprint=fingerprint["sha256"], lineage=fingerprint["inputs"])
                # imported here: `rlhf stage=prepare` does not pay for the trainers it does not use
                importlib.import_module(stage.module).run(stage_cfg, stage_run)
                if fingerprint and is_main_process():
                    stage_run.manifest["outputs"] = {"path": str(stages.output_path(stage_cfg, name)),
                                                     "sha256": lineage.output_hash(stage_cfg, name)}
            gc.collect()  # the stage's models, before the next stage loads its own
    # Every rank ends the command together: a rank that exits while rank 0 still writes (compare's
    # report) tears down its side of the process group under it (gloo aborts the process)
    barrier()


def _drop_stale_checkpoints(cfg: RLHFConfig, name: str, expected: str) -> None:
    """A stage rerun because its settings or inputs changed starts afresh; one interrupted under
    the same fingerprint (preempted, killed) keeps its checkpoints and resumes from them."""
    before = lineage.recorded(cfg, name).get("fingerprint")
    checkpoints = cfg.stage_dir / "checkpoints"
    if before not in (None, expected) and checkpoints.exists():
        log.info("%s: settings or inputs changed since %s was written; starting afresh", name, checkpoints)
        if is_main_process():
            shutil.rmtree(checkpoints)
    barrier()
