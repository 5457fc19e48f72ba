"""What the Trainer-based stages (SFT, RM, DPO, bon_sft) share: their TrainingArguments,
checkpoints and resume, loss summary, log forwarding, the toy task's gold evaluation and the
stage's last steps."""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from rlhf.core.artifacts import StageRun, save_final, write_atomic
from rlhf.config import RLHFConfig, TrainConfig
from rlhf.core.distributed import barrier, describe, full_weights, is_engine, is_main_process
from rlhf.core.nonfinite import NonFiniteGuard
from rlhf.core.preemption import StopRequest
from rlhf.core.tracking import Tracker
from rlhf.sampling import gold_evaluation

log = logging.getLogger(__name__)


def trainer_args(args_class, t: TrainConfig, cfg: RLHFConfig, checkpoints: Path | None = None, **extra):
    """trl's SFTConfig / RewardConfig / DPOConfig from our TrainConfig (built here, not registered
    as a schema: trl's configs hold hundreds of fields and change between releases). Checkpoints
    go to `checkpoints`, default <stage>/checkpoints."""
    eval_steps = t.eval_every_steps or None
    return args_class(
        output_dir=str(checkpoints or cfg.stage_dir / "checkpoints"),
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
        # the datasets carry a "length" column (tokens of an example's longest sequence)
        # A copy: the integration fills the "auto" values in place.
        deepspeed=copy.deepcopy(cfg.deepspeed.config) if cfg.deepspeed.name != "none" else None,
        **_renamed_fields(args_class, t, cfg),
        **extra,
    )


def _renamed_fields(args_class, t: TrainConfig, cfg: RLHFConfig) -> dict:
    """The TrainingArguments fields transformers renamed, under the name this release has (the
    vLLM environment runs transformers 5.19, the main one a later 5.x)."""
    fields = {f.name for f in dataclasses.fields(args_class)}
    # trl turns checkpointing on by default (its configs' gradient_checkpointing=True); ours is the model's choice
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    if "train_sampling_strategy" in fields:
        sampling = {"train_sampling_strategy": "group_by_length" if t.group_by_length else "random"}
    else:
        sampling = {"group_by_length": t.group_by_length}
    return {checkpointing: cfg.model.gradient_checkpointing, **sampling}


COMPLETE = "COMPLETE"  # written into a Trainer checkpoint after every rank has finished it


def last_checkpoint(cfg: RLHFConfig, folder: Path | None = None) -> str | None:
    """The newest complete Trainer checkpoint of this stage (checkpoint-<step>/, DeepSpeed's own
    shards inside under ZeRO), to continue from when the stage is rerun with the same run name.
    The Trainer writes checkpoints in place, so one without the COMPLETE marker may be half
    written (the job was killed while saving) and is passed over."""
    folder = folder or cfg.stage_dir / "checkpoints"
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


class NonFiniteCallback(TrainerCallback):
    """Before each optimizer step, the gradients' norm: when it is not finite (a nan or inf loss
    shows there too), stops the stage (NonFiniteError, before any checkpoint of that step) or,
    with `<section>.skip_nonfinite`, skips the step (rlhf.core.nonfinite)."""

    def __init__(self, section: str, t: TrainConfig):
        self.guard = NonFiniteGuard(t.skip_nonfinite, f"{section}.skip_nonfinite")

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if args.fp16:
            return  # the loss scaler owns overflows: it skips those steps itself and lowers its scale
        where = f"step {state.global_step + 1}"
        if args.deepspeed:
            # The engine has already stepped, inside backward(), unless its overflow check found
            # non-finite gradients and skipped the step (which the optimizer reports): what is
            # left here is to stop or count.
            if getattr(optimizer, "step_was_skipped", False):
                self.guard.finite(where, "this step (DeepSpeed did)", {"the gradient norm (DeepSpeed's check)": float("inf")})
            return
        # (after the Trainer's clipping, which turns non-finite gradients into nan, never finite)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if not self.guard.finite(where, "this step", {"the gradient norm": norm}):
            # A true skip: the optimizer passes over a parameter without a gradient, so neither
            # its weights nor its Adam moments change (zeroed gradients would still move them
            # through momentum and weight decay). The learning-rate schedule still advances.
            for p in model.parameters():
                p.grad = None


def trained_model(trainer):
    """The DeepSpeed engine when there is one (ZeRO-3 needs it to gather the weights), else the
    plain model (not its DDP wrapper)."""
    return trainer.model_wrapped if is_engine(trainer.model_wrapped) else trainer.model


def loss_summary(trainer) -> dict:
    """First and last logged training loss and the step count: the "did it learn" figures (and
    with skip_nonfinite, the steps skipped)."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"train_loss_first": losses[0] if losses else None,
               "train_loss_last": losses[-1] if losses else None, "steps": trainer.state.global_step}
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, NonFiniteCallback) and callback.guard.skip:
            summary["nonfinite_skipped"] = callback.guard.skipped  # steps counted above, not taken
    return summary


class TrackerCallback(TrainerCallback):
    """Forwards the Trainer's logs: `loss` -> <prefix>/train/loss, `eval_loss` -> <prefix>/eval/loss."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        renamed = {(f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"): v for k, v in logs.items()}
        self.tracker.log(renamed, state.global_step)


def stage_callbacks(section: str, t: TrainConfig, tracker: Tracker, stop: StopRequest) -> list[TrainerCallback]:
    """Every Trainer-based stage's callbacks: metrics to the tracker, checkpoints marked complete
    and preemption, non-finite steps stopped or skipped. `section`: the stage's config section."""
    return [TrackerCallback(tracker), CheckpointCallback(stop), NonFiniteCallback(section, t)]


def gold_metrics(cfg: RLHFConfig, t, bundle, trainer, tokenizer) -> dict:
    """On a task with a gold scorer (the toy task): the gold score of greedy and sampled answers
    to the first `t.gold_eval_prompts` eval prompts. Every rank evaluates all of them (same seed,
    same result): simpler than sharing them out, and a small part of the stage."""
    if bundle.gold_scorer is None or t.gold_eval_prompts <= 0:
        return {}
    prompts = [p.prompt for p in bundle.splits["eval"].prompts[: t.gold_eval_prompts]]
    with full_weights(trained_model(trainer)) as model:
        return gold_evaluation(model, tokenizer, prompts, bundle.gold_scorer, seed=cfg.seed,
                               max_new_tokens=t.max_new_tokens or cfg.data.max_response_tokens)


def finish(cfg: RLHFConfig, stage_run: StageRun, trainer, tokenizer, tracker: Tracker, label: str) -> None:
    """The final metrics to the tracker, the sharding report to the manifest, the model to
    <stage>/final (every rank calls this: saving under ZeRO-3 is a collective)."""
    tracker.log({f"final/{k}": v for k, v in stage_run.metrics.items() if isinstance(v, (int, float))},
                trainer.state.global_step)
    tracker.close()
    stage_run.manifest["distributed"] = describe(trained_model(trainer), cfg)
    save_final(trained_model(trainer), tokenizer, cfg.stage_dir / "final")
    log.info("%s done: %s", label, {k: round(v, 4) if isinstance(v, float) else v for k, v in stage_run.metrics.items()})
    log.info("final model: %s", cfg.stage_dir / "final")
