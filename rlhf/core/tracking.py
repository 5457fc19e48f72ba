"""Metrics to TensorBoard or Weights & Biases under one prefix per stage (sft/, rm/, ppo/).

Our own writer rather than the Trainer's report_to: the Trainer names its tags train/... and
eval/..., so SFT's and RM's losses would land on one chart; PPO has no Trainer at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rlhf.core.distributed import is_main_process

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, stage_dir: Path, prefix: str, backend: str = "none", wandb_project: str | None = None):
        """`backend` and `wandb_project` are logger.backend's value and logger.wandb_project, passed
        as plain values: core sits below the config layer and does not import its schema."""
        self.prefix = prefix
        self._tb = self._wandb = None
        if not is_main_process():
            return
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(stage_dir / "logs"))
        elif backend == "wandb":
            try:
                import wandb
            except ImportError as e:
                raise ImportError("logger=wandb needs the wandb package: pip install wandb") from e
            self._wandb = wandb.init(project=wandb_project, name=f"{stage_dir.parent.name}/{prefix}",
                                     dir=str(stage_dir), reinit=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        tagged = {f"{self.prefix}/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self._tb is not None:
            for tag, value in tagged.items():
                self._tb.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log(tagged, step=step)

    def histograms(self, values: dict, step: int) -> None:
        """Distributions (e.g. RM scores of best vs worst responses), TensorBoard only."""
        if self._tb is not None:
            for tag, array in values.items():
                self._tb.add_histogram(f"{self.prefix}/{tag}", array, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
