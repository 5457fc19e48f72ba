"""`rlhf`: compose the Hydra config, validate it, run one stage in runs/<run>/<stage>/."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlhf import distributed
from rlhf.config import ConfigError, RLHFConfig
from rlhf.config_check import check, register_schemas, to_config
from rlhf.pipeline import run_stages
from rlhf.preemption import EXIT_PREEMPTED, Preempted

log = logging.getLogger("rlhf")

# conf/ sits beside the package in the checkout (the layout is fixed); an absolute path, because
# Hydra would read a relative one as a Python package next to rlhf.cli.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

register_schemas()


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def _main(composed: DictConfig) -> None:
    from rlhf.data import DataError  # the data layer pulls in numpy/datasets: not for --help

    if not distributed.is_main_process():
        _quiet_this_rank()
    try:
        cfg: RLHFConfig = to_config(composed)
        check(cfg)
        if cfg.model.gguf_package and not cfg.model.name_or_path:
            from rlhf.offline import converted

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
    except (ConfigError, DataError) as e:
        # Expected, user-fixable failures: the message says what to do, a traceback would bury it.
        log.error("%s", e)
        sys.exit(2)


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


def main() -> None:
    sys.argv[:] = distributed.adopt_launcher_env(sys.argv)
    _main()


if __name__ == "__main__":
    main()
