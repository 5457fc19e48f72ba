"""`rlhf`: compose the Hydra config, validate it, run one stage in runs/<run>/<stage>/."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlhf.artifacts import StageRun
from rlhf.config import ConfigError, RLHFConfig
from rlhf.config_check import check, register_schemas, to_config

log = logging.getLogger("rlhf")

# stage name -> module with `run(cfg: RLHFConfig, run: StageRun)`; imported on demand so that
# `rlhf stage=prepare` does not pay for importing trainers it does not use.
STAGE_MODULES = {"prepare": "rlhf.prepare", "sft": "rlhf.sft", "rm": "rlhf.reward", "ppo": "rlhf.ppo.trainer",
                 "compare": "rlhf.compare", "generate": "rlhf.generate"}

# conf/ sits beside the package in the checkout (the layout is fixed); an absolute path, because
# Hydra would read a relative one as a Python package next to rlhf.cli.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

register_schemas()


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def _main(composed: DictConfig) -> None:
    from rlhf.data import DataError  # the data layer pulls in numpy/datasets: not for --help

    try:
        cfg: RLHFConfig = to_config(composed)
        check(cfg)
        if cfg.model.gguf_package and not cfg.model.name_or_path:
            from rlhf.offline import converted

            cfg.model.name_or_path = str(converted(cfg.model))
        stage = importlib.import_module(STAGE_MODULES[cfg.stage.name])
        log.info("stage %s -> %s", cfg.stage.name, cfg.stage_dir)
        with StageRun(cfg.stage_dir, composed) as run:
            stage.run(cfg, run)
    except (ConfigError, DataError) as e:
        # Expected, user-fixable failures: the message says what to do, a traceback would bury it.
        log.error("%s", e)
        sys.exit(2)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
