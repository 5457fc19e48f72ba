"""Stage 1, `rlhf stage=sft`: supervised fine-tuning on the `sft` split's demonstrations.

trl's SFTTrainer does the training. We hand it examples already tokenized by the data layer
(prompt ids + response ids, with a completion mask), so the loss covers the response tokens
and their closing EOS only, and the token sequence is exactly the one PPO will sample.
"""

from __future__ import annotations

import logging

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from rlhf.config import ConfigError, RLHFConfig, TrainConfig
from rlhf.core.artifacts import StageRun, save_final
from rlhf.core.preemption import stop_request
from rlhf.core.tracking import Tracker
from rlhf.data import Demonstration, describe_source, encode_prompts, encode_responses, load_data
from rlhf.models import load_causal_lm, load_tokenizer, peft_lora_config
from rlhf.stages import resolve_inputs
from rlhf.stages.training import finish, gold_metrics, last_checkpoint, loss_summary, stage_callbacks, trainer_args

log = logging.getLogger(__name__)


def sft_dataset(tokenizer, demos: list[Demonstration]) -> Dataset:
    return token_dataset(encode_prompts(tokenizer, [d.prompt for d in demos]),
                         encode_responses(tokenizer, [d.response for d in demos]))


def token_dataset(prompts: list[list[int]], responses: list[list[int]]) -> Dataset:
    """prompt ids + response ids, the loss on the response's tokens only."""
    return Dataset.from_dict({
        "input_ids": [list(p) + list(r) for p, r in zip(prompts, responses)],
        "completion_mask": [[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)],
        "length": [len(p) + len(r) for p, r in zip(prompts, responses)],  # group_by_length reads it
    })


def sft_trainer(cfg: RLHFConfig, t: TrainConfig, tokenizer, init_from, train_dataset: Dataset, eval_dataset: Dataset,
                callbacks, checkpoints=None) -> SFTTrainer:
    """trl's SFTTrainer on token datasets, starting from `init_from` (None: the base model); the
    trainer of SFT and of best-of-n distillation."""
    packing = getattr(t, "packing", False)
    # The Trainer's arguments before the model: with a ZeRO-3 config they make from_pretrained
    # load each rank's shard only, not the whole model on every rank.
    args = trainer_args(SFTConfig, t, cfg, checkpoints, completion_only_loss=True, packing=packing,
                        max_length=cfg.data.max_prompt_tokens + cfg.data.max_response_tokens if packing else None,
                        dataset_num_proc=None)
    model = load_causal_lm(cfg.model, tokenizer, path=init_from, dropout=t.dropout)  # null: the base model, pinned to model.revision
    lora = peft_lora_config(cfg.model.lora, "causal") if cfg.model.lora.enabled else None
    return SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=lora,
                      train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks)


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    s = cfg.sft
    tokenizer = load_tokenizer(cfg.model)
    if s.adopt:
        return adopt(cfg, stage_run, tokenizer)
    bundle = load_data(cfg.data, tokenizer)
    train_demos = bundle.require("sft", "demonstrations", "sft")
    eval_demos = bundle.require("eval", "demonstrations", "sft")
    init_from = resolve_inputs(cfg, "sft")["init_from"]  # None: the tiny model, built fresh
    stage_run.manifest["inputs"] = {"data": describe_source(cfg.data), "init_from": init_from or "tiny model, built fresh"}
    stage_run.manifest["data"] = bundle.summary()

    tracker = Tracker(cfg.stage_dir, "sft", cfg.logger.backend.value, cfg.logger.wandb_project)
    stop = stop_request()
    trainer = sft_trainer(cfg, s, tokenizer, s.init_from, sft_dataset(tokenizer, train_demos),
                          sft_dataset(tokenizer, eval_demos), stage_callbacks("sft", s, tracker, stop))
    log.info("SFT on %d demonstrations (%d eval), %d parameters, %d trained", len(train_demos), len(eval_demos),
             sum(p.numel() for p in trainer.model.parameters()),
             sum(p.numel() for p in trainer.model.parameters() if p.requires_grad))
    trainer.train(resume_from_checkpoint=last_checkpoint(cfg))
    if stop.signal_name:
        stop.stop(f"checkpoint-{trainer.state.global_step}")

    stage_run.metrics.update({**loss_summary(trainer), "eval_loss": trainer.evaluate()["eval_loss"]})
    stage_run.metrics.update(gold_metrics(cfg, s, bundle, trainer, tokenizer))
    finish(cfg, stage_run, trainer, tokenizer, tracker, "SFT")


def adopt(cfg: RLHFConfig, stage_run: StageRun, tokenizer) -> None:
    """sft.adopt: the starting model, untrained, as this run's SFT policy (what later stages
    start from and compare measures against)."""
    init_from = resolve_inputs(cfg, "sft")["init_from"]
    if init_from is None and not cfg.model.name_or_path:
        raise ConfigError("sft.adopt=true keeps the starting model as it is, and the tiny model is built fresh "
                          "(untrained): set sft.init_from=<folder or hub id>, or a model= with weights")
    stage_run.manifest["inputs"] = {"init_from": init_from or "the base model", "adopted": True}
    model = load_causal_lm(cfg.model, tokenizer, path=init_from)
    stage_run.metrics["adopted"] = 1
    save_final(model, tokenizer, cfg.stage_dir / "final")
    log.info("SFT: no training (sft.adopt=true): %s written as the SFT policy, %s", init_from or "the base model",
             cfg.stage_dir / "final")
