"""`rlhf`: compose the Hydra config, validate it, run one stage in runs/<run>/<stage>/.

`rlhf --list-stages` prints the stages `stage=pipeline` runs, in order (jobs/ reads it);
`rlhf --list-stages=all` every stage with what it does.

Exit codes: 0 done; 2 a config or data error, or the run is in use by another command (the
message says what to change); 3 preempted (EXIT_PREEMPTED: checkpoint written, rerun to
continue); 4 a non-finite loss, gradient norm, reward or advantage (EXIT_NONFINITE: stopped
before the optimizer stepped on it, the last checkpoint intact); anything else a crash.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from rlhf import stages
from rlhf.config import ConfigError, RLHFConfig
from rlhf.checks import check, register_schemas, to_config
from rlhf.core import distributed
from rlhf.core.nonfinite import EXIT_NONFINITE, NonFiniteError
from rlhf.core.preemption import EXIT_PREEMPTED, Preempted
from rlhf.pipeline import run_stages

log = logging.getLogger("rlhf")

def _conf_dir() -> Path:
    """The Hydra configs: rlhf/conf/ when installed from a wheel (setup.py ships the top-level
    conf/ as the package rlhf.conf), else conf/ beside the package, in a checkout and under an
    editable install, so edits there show without a reinstall. An absolute path, because Hydra
    would read a relative one as a Python package next to rlhf.cli."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if (installed / "config.yaml").is_file() else package.parent / "conf"


CONF_DIR = _conf_dir()



def _writable_folder(path: str) -> str:
    """hydra.run.dir goes through this resolver: Hydra makes that folder before any of our code
    runs, so a full or read-only disk would end in Hydra's traceback; here it ends in one line
    naming the folder, and exit 2, as a full disk later in the run does (_main)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from rlhf.core.artifacts import storage_problem

        problem = storage_problem(e)
        if problem is None:
            raise
        print(f"[rlhf][ERROR] - cannot write {e.filename or path}: {problem[0]}. Free space there, make it "
              "writable, or point runs_dir elsewhere", file=sys.stderr, flush=True)
        raise SystemExit(2) from None  # not an Exception: passes Hydra's handler, which would print a traceback
    return path


register_schemas()
if not OmegaConf.has_resolver("writable_folder"):
    OmegaConf.register_new_resolver("writable_folder", _writable_folder)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def _main(composed: DictConfig) -> None:
    from rlhf.data import DataError  # the data layer pulls in numpy/datasets: not for --help

    if not distributed.is_main_process():
        _quiet_this_rank()
    _quiet_libraries()
    try:
        variant = _sweep_variant(composed)
        if variant:
            with open_dict(composed):
                composed.variant = variant
        cfg: RLHFConfig = to_config(composed)
        check(cfg)
        if cfg.model.gguf_package and not cfg.model.name_or_path:
            from rlhf.models.offline import converted

            cfg.model.name_or_path = str(converted(cfg.model))
        if cfg.deepspeed.name != "none" and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
            raise ConfigError(f"deepspeed={cfg.deepspeed.name} under `accelerate launch --cpu`: accelerate runs "
                              "DeepSpeed only without --cpu (it allows one of --cpu/--use_deepspeed). On CPUs "
                              "launch with `torchrun --nproc_per_node N -m rlhf.cli ...` instead")
        distributed.init(use_deepspeed=cfg.deepspeed.name != "none")
        log.info("rank %d of %d, deepspeed=%s", distributed.rank(), distributed.world_size(), cfg.deepspeed.name)
        run_stages(cfg, composed)
    except Preempted as e:
        # A clean stop on SIGTERM/SIGUSR1: the checkpoint is written, the job can be requeued.
        log.warning("%s", e)
        sys.exit(EXIT_PREEMPTED)
    except NonFiniteError as e:
        # A nan/inf loss, gradient, reward or advantage, caught before the optimizer stepped on it:
        # the last checkpoint is intact, and a rerun would meet the same value.
        log.error("%s", e)
        sys.exit(EXIT_NONFINITE)
    except (ConfigError, DataError) as e:
        # Expected, user-fixable failures: the message says what to do, a traceback would bury it.
        log.error("%s", e)
        sys.exit(2)
    except Exception as e:
        from rlhf.core.artifacts import storage_problem

        problem = storage_problem(e)
        if problem is None:
            raise
        what, path = problem
        where = path or Path(composed.runs_dir) / composed.run
        log.error("cannot write %s: %s (%s). Free space there, make it writable, or point runs_dir elsewhere; "
                  "a rerun resumes from the last complete checkpoint", where, what, type(e).__name__)
        sys.exit(2)


# overrides that never name a point of a sweep: where it writes, and what it runs
_NOT_IN_VARIANT = {"stage", "run", "runs_dir", "variant", "stages", "loop.round"}  # a round has its folder
# the keys a multirun varies, as the launching process read them from its command line: a
# launcher that runs each point elsewhere (hydra/launcher=slurm) passes the environment on
SWEPT_ENV = "RLHF_SWEPT_OVERRIDES"


def swept_keys(args: list[str]) -> set[str]:
    """The keys of a command line's sweep overrides (comma lists, ranges, choice(...))."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.key_or_group for o in OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
            if o.is_sweep_override()}


def _sweep_variant(composed: DictConfig) -> str | None:
    """In a multirun (`rlhf -m ...`) without variant= set: this point's name, `key=value` for
    each override the sweep varies (the comma lists and ranges of the command line), e.g.
    `algo=grpo,seed=1`; a '/' in a value becomes '_'. The swept keys come from the launching
    process (SWEPT_ENV, which jobs started elsewhere inherit), else from this command line, else
    every override of the point counts. A multirun that varies only run= (or nothing) gives plain
    runs (no variant)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if composed.get("variant") is not None or not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    parser = OverridesParser.create()
    if SWEPT_ENV in os.environ:  # set by main() where the sweep was launched, inherited by its jobs
        swept = set(filter(None, os.environ[SWEPT_ENV].split(",")))
    else:
        try:
            swept = swept_keys(sys.argv[1:])
        except Exception:  # not our command line: fall back to every override of the point
            swept = None
    if swept == set():  # a multirun that varies nothing a folder could be named by: plain runs
        return None
    parts = []
    for override in parser.parse_overrides(list(hydra_cfg.overrides.task)):
        key = override.key_or_group
        if key in _NOT_IN_VARIANT or key.startswith("hydra") or (swept and key not in swept):
            continue
        parts.append(f"{key}={override.get_value_element_as_str()}".replace("/", "_"))
    return ",".join(parts) or None


def _quiet_this_rank() -> None:
    """Ranks other than 0 log warnings and errors only, and to the console only: one rlhf.log
    and one progress line per stage, not one per rank."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _quiet_libraries() -> None:
    """Library messages about choices we made, not about the user's run: DeepSpeed announces on
    every import that it fell back to the CPU when no GPU is found (we name the CPU, which it
    then takes silently), and warns of a deprecated call of its own on every ZeRO-3 step."""
    import warnings

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # DeepSpeed 0.19 under ZeRO-3 warns on every reduce-scatter (hundreds of lines per update)
    warnings.filterwarnings("ignore", message=r".*reduce_scatter_tensor.*deprecated", category=FutureWarning)


def list_stages(which: str, round: int = 1) -> str:
    """`rlhf --list-stages`: the pipeline's stages (of round `round` of the feedback loop: `rlhf
    --list-stages loop.round=2`), for jobs/submit.sh; `--list-stages=all`: every stage, one a line."""
    if which == "all":
        width = max(map(len, stages.STAGES))
        when = {"first": "round 1 only", "later": "rounds 2 and later"}
        rows = []
        for s in stages.STAGES.values():
            said = ("not in the pipeline" if not s.in_pipeline else
                    "pipeline: only when named in stages=" if s.default_rounds == "none" else
                    f"pipeline: {when[s.rounds]}" if s.rounds != "all" else
                    f"pipeline: {when[s.default_rounds]}; other rounds when named in stages="
                    if s.default_rounds != "all" else None)
            rows.append(f"{s.name:<{width}}  {s.summary}" + (f"  ({said})" if said else ""))
        return "\n".join([*rows, f"{stages.CHAIN:<{width}}  runs {' -> '.join(stages.pipeline_stages())}; in a later "
                                 f"round (loop.round=2) {' -> '.join(stages.pipeline_stages(round=2))}"])
    return " ".join(stages.pipeline_stages(round=round))


def main() -> None:
    for arg in sys.argv[1:]:
        if arg.split("=", 1)[0] == "--list-stages":
            round_ = next((int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("loop.round=")), 1)
            print(list_stages(arg.split("=", 1)[1] if "=" in arg else "pipeline", round_))
            return
    sys.argv[:] = distributed.adopt_launcher_env(sys.argv)
    if any(arg in ("-m", "--multirun") for arg in sys.argv[1:]):
        try:
            os.environ[SWEPT_ENV] = ",".join(sorted(swept_keys(sys.argv[1:])))
        except Exception:  # a malformed override: Hydra's own error says which
            pass
    _main()


if __name__ == "__main__":
    main()
