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
from rlhf.config import ConfigError, RLHFConfig, StageConfig
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
            elif fingerprint:
                _refuse_to_mix(stage_cfg, name, fingerprint["sha256"], stage_composed)
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


def _refuse_to_mix(cfg: RLHFConfig, name: str, expected: str, composed: DictConfig) -> None:
    """One stage run by itself resumes the checkpoints in its folder (after a stop, or with more
    updates or epochs to extend it); written with other settings, they would make a model of two
    runs, so it stops and says what differs. So does a sweep's point whose folder holds another
    sweep's finished point (points are named by what their sweep varies). Changed inputs alone (an
    earlier stage rerun) do not stop it: the pipeline starts such a stage afresh, a stage run by
    itself resumes as asked."""
    before = lineage.recorded(cfg, name)
    if before.get("fingerprint") in (None, expected):
        return
    changed = {k: v for k, v in lineage.changed_settings(cfg, name, composed).items()
               if not lineage.CONTINUABLE.match(k)}
    resumes = (cfg.stage_dir / "checkpoints").exists()
    sweep_point = cfg.variant is not None and _in_multirun() and before.get("status") == "completed"
    if changed and (resumes or sweep_point):
        what = "has checkpoints" if resumes else "holds a finished run"
        raise ConfigError(
            f"{cfg.stage_dir} {what} of {name} with other settings ({'; '.join(changed.values())}), "
            f"which this command would {'resume' if resumes else 'overwrite'}. Give this run a folder of its own "
            f"(variant=<name>, or run=<name>), or delete {cfg.stage_dir} to redo it")


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


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
