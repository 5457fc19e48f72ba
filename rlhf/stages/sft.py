"""Stage 1, `rlhf stage=sft`: supervised fine-tuning on the `sft` split's demonstrations.

trl's SFTTrainer does the training. We hand it examples already tokenized by the data layer
(prompt ids + response ids, with a completion mask), so the loss covers the response tokens
and their closing EOS only, and the token sequence is exactly the one PPO will sample.
"""

from __future__ import annotations

import logging

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from rlhf.config import RLHFConfig
from rlhf.core.artifacts import StageRun, save_final
from rlhf.core.distributed import describe, full_weights
from rlhf.core.preemption import stop_request
from rlhf.core.tracking import Tracker
from rlhf.data import Demonstration, describe_source, encode_prompts, encode_responses, load_data
from rlhf.models import load_causal_lm, load_tokenizer, peft_lora_config
from rlhf.sampling import gold_evaluation
from rlhf.stages import resolve_inputs
from rlhf.stages.training import CheckpointCallback, TrackerCallback, last_checkpoint, loss_summary, trained_model, trainer_args

log = logging.getLogger(__name__)


def sft_dataset(tokenizer, demos: list[Demonstration]) -> Dataset:
    prompts = encode_prompts(tokenizer, [d.prompt for d in demos])
    responses = encode_responses(tokenizer, [d.response for d in demos])
    return Dataset.from_dict({
        "input_ids": [p + r for p, r in zip(prompts, responses)],
        "completion_mask": [[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)],
    })


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    s = cfg.sft
    tokenizer = load_tokenizer(cfg.model)
    bundle = load_data(cfg.data, tokenizer)
    train_demos = bundle.require("sft", "demonstrations")
    eval_demos = bundle.require("eval", "demonstrations")
    init_from = resolve_inputs(cfg, "sft")["init_from"]  # None: the tiny model, built fresh
    stage_run.manifest["inputs"] = {"data": describe_source(cfg.data), "init_from": init_from or "tiny model, built fresh"}
    stage_run.manifest["data"] = bundle.summary()

    # The Trainer's arguments before the model: with a ZeRO-3 config they make from_pretrained
    # load each rank's shard only, not the whole model on every rank.
    args = trainer_args(SFTConfig, s, cfg, completion_only_loss=True, packing=s.packing,
                        max_length=cfg.data.max_prompt_tokens + cfg.data.max_response_tokens if s.packing else None,
                        dataset_num_proc=None)
    model = load_causal_lm(cfg.model, tokenizer, path=s.init_from, dropout=s.dropout)  # null: the base model, pinned to model.revision
    tracker = Tracker(cfg.logger, cfg.stage_dir, "sft")
    stop = stop_request()
    lora = peft_lora_config(cfg.model.lora, "causal") if cfg.model.lora.enabled else None
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=lora,
                         train_dataset=sft_dataset(tokenizer, train_demos),
                         eval_dataset=sft_dataset(tokenizer, eval_demos),
                         callbacks=[TrackerCallback(tracker), CheckpointCallback(stop)])
    log.info("SFT on %d demonstrations (%d eval), %d parameters, %d trained", len(train_demos), len(eval_demos),
             sum(p.numel() for p in trainer.model.parameters()),
             sum(p.numel() for p in trainer.model.parameters() if p.requires_grad))
    trainer.train(resume_from_checkpoint=last_checkpoint(cfg))
    if stop.signal_name:
        stop.stop(f"checkpoint-{trainer.state.global_step}")

    stage_run.metrics.update({**loss_summary(trainer), "eval_loss": trainer.evaluate()["eval_loss"]})
    if bundle.gold_scorer is not None and s.gold_eval_prompts > 0:
        prompts = [p.prompt for p in bundle.splits["eval"].prompts[: s.gold_eval_prompts]]
        # Every rank evaluates all prompts (same seed, same result): simpler than sharing them
        # out, and a small part of the stage.
        with full_weights(trained_model(trainer)) as model:
            stage_run.metrics.update(gold_evaluation(model, tokenizer, prompts, bundle.gold_scorer,
                                               max_new_tokens=s.max_new_tokens or cfg.data.max_response_tokens,
                                               seed=cfg.seed))
    tracker.log({f"final/{k}": v for k, v in stage_run.metrics.items() if v is not None}, trainer.state.global_step)
    tracker.close()
    stage_run.manifest["distributed"] = describe(trained_model(trainer), cfg)
    save_final(trained_model(trainer), tokenizer, cfg.stage_dir / "final")
    log.info("SFT done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in stage_run.metrics.items()})
    log.info("final model: %s", cfg.stage_dir / "final")
