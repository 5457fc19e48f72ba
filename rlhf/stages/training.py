"""What the Trainer-based stages (SFT, RM) share: their TrainingArguments, checkpoints and
resume, loss summary and log forwarding."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from rlhf.core.artifacts import write_atomic
from rlhf.config import RLHFConfig, TrainConfig
from rlhf.core.distributed import barrier, is_engine, is_main_process
from rlhf.core.preemption import StopRequest
from rlhf.core.tracking import Tracker

log = logging.getLogger(__name__)


def trainer_args(args_class, t: TrainConfig, cfg: RLHFConfig, **extra):
    """trl's SFTConfig / RewardConfig from our TrainConfig (built here, not registered as a
    schema: trl's configs hold hundreds of fields and change between releases)."""
    eval_steps = t.eval_every_steps or None
    return args_class(
        output_dir=str(cfg.stage_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if t.save_every_steps else "no",
        save_steps=t.save_every_steps or 500,
        save_total_limit=t.save_total_limit,
        logging_steps=cfg.logger.every_steps,
        report_to="none",  # rlhf.core.tracking writes the metrics, under the stage's prefix
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.model.dtype == "bfloat16",
        fp16=cfg.model.dtype == "float16",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        # A copy: the integration fills the "auto" values in place.
        deepspeed=copy.deepcopy(cfg.deepspeed.config) if cfg.deepspeed.name != "none" else None,
        **extra,
    )


COMPLETE = "COMPLETE"  # written into a Trainer checkpoint after every rank has finished it


def last_checkpoint(cfg: RLHFConfig) -> str | None:
    """The newest complete Trainer checkpoint of this stage (checkpoint-<step>/, DeepSpeed's own
    shards inside under ZeRO), to continue from when the stage is rerun with the same run name.
    The Trainer writes checkpoints in place, so one without the COMPLETE marker may be half
    written (the job was killed while saving) and is passed over."""
    folder = cfg.stage_dir / "checkpoints"
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1])) if folder.is_dir() else []
    for candidate in reversed(found):
        if (candidate / COMPLETE).exists():
            log.info("resuming from %s", candidate)
            return str(candidate)
        log.warning("%s is incomplete (no %s marker: killed while saving?); not resuming from it",
                    candidate, COMPLETE)
    return None


class CheckpointCallback(TrainerCallback):
    """Marks each checkpoint complete once every rank has written its part, and on SIGTERM or
    SIGUSR1 (rlhf.core.preemption) saves a checkpoint at the end of the current step and stops."""

    def __init__(self, stop: StopRequest):
        self.stop = stop

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.requested():
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        barrier()
        if is_main_process():
            write_atomic(Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE, "")
        barrier()


def trained_model(trainer):
    """The DeepSpeed engine when there is one (ZeRO-3 needs it to gather the weights), else the
    plain model (not its DDP wrapper)."""
    return trainer.model_wrapped if is_engine(trainer.model_wrapped) else trainer.model


def loss_summary(trainer) -> dict:
    """First and last logged training loss and the step count: the "did it learn" figures."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"train_loss_first": losses[0] if losses else None,
            "train_loss_last": losses[-1] if losses else None, "steps": trainer.state.global_step}


class TrackerCallback(TrainerCallback):
    """Forwards the Trainer's logs: `loss` -> <prefix>/train/loss, `eval_loss` -> <prefix>/eval/loss."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        renamed = {(f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"): v for k, v in logs.items()}
        self.tracker.log(renamed, state.global_step)
