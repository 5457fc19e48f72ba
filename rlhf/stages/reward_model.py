"""Stage 2, `rlhf stage=rm`: a reward model on K-wise comparisons, trained as InstructGPT does.

All C(K,2) pairs of one prompt's K ranked responses form one batch element: each response is
scored once, and the loss is -1/C(K,2) * sum log sigmoid(r_better - r_worse) over that prompt's
pairs (ties give no pair), then averaged over prompts. Pairwise data is K = 2 on the same path.

trl's RewardTrainer brings the model set-up, metrics and logging; it knows only chosen/rejected
pairs, so the K-wise collator and loss below replace its pair ones. After training, a bias is
chosen so that the `sft` split's demonstrations score mean 0; it is saved with the model
(config.json, key `rlhf_reward_normalization`) with the raw mean and std, and
`rlhf.sampling.score` applies it.
"""

from __future__ import annotations

import dataclasses
import logging
import random

import numpy as np
import torch
from datasets import Dataset
from trl import RewardConfig, RewardTrainer

from rlhf.algos.preference import kwise_loss
from rlhf.config import DataConfig, DataFormat, RLHFConfig, SourceConfig
from rlhf.core.artifacts import StageRun, save_final
from rlhf.core.distributed import describe, full_weights
from rlhf.core.ops import pad_right
from rlhf.core.preemption import stop_request
from rlhf.core.tracking import Tracker
from rlhf.data import Comparison, describe_source, encode_prompts, encode_responses, load_data
from rlhf.data.toy import answer, gold_score, wrong_digit
from rlhf.models import clear_normalization, load_reward_model, load_tokenizer, peft_lora_config, set_normalization
from rlhf.sampling import score
from rlhf.stages import resolve_inputs, with_collected
from rlhf.stages.evaluate import pairwise_metrics, score_comparisons
from rlhf.stages.training import last_checkpoint, loss_summary, stage_callbacks, trained_model, trainer_args

log = logging.getLogger(__name__)


def comparison_dataset(tokenizer, comparisons: list[Comparison]) -> Dataset:
    """One row per comparison: its K token sequences (prompt + response) and its pairs."""
    prompts = encode_prompts(tokenizer, [c.prompt for c in comparisons])
    responses = encode_responses(tokenizer, [r for c in comparisons for r in c.responses])
    rows = {"input_ids": [], "pairs": [], "margin": [], "length": []}
    start = 0
    for c, prompt_ids in zip(comparisons, prompts):
        rows["input_ids"].append([prompt_ids + r for r in responses[start:start + c.k]])
        rows["length"].append(max(map(len, rows["input_ids"][-1])))  # padded to its longest: group_by_length
        rows["pairs"].append([list(p) for p in c.pairs()])
        rows["margin"].append(c.margin or 0.0)
        start += c.k
    return Dataset.from_dict(rows)


class KWiseCollator:
    """Flattens a batch of comparisons into one padded batch of responses (each once) plus the
    index tensors of their pairs."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences, better, worse, group, margin = [], [], [], [], []
        for g, ex in enumerate(examples):
            offset = len(sequences)
            sequences.extend(ex["input_ids"])
            for i, j in ex["pairs"]:
                better.append(offset + i)
                worse.append(offset + j)
                group.append(g)
                margin.append(ex["margin"])
        input_ids, attention_mask = pad_right(sequences, self.pad_token_id)  # positions start at 0, as in scoring
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "better": torch.tensor(better), "worse": torch.tensor(worse), "group": torch.tensor(group),
                "margin": torch.tensor(margin, dtype=torch.float), "num_groups": torch.tensor(len(examples))}


class KWiseRewardTrainer(RewardTrainer):
    def _prepare_dataset(self, dataset, *args, **kwargs):
        return dataset  # tokenized by the data layer already

    def _set_signature_columns_if_needed(self):
        self._signature_columns = ["input_ids", "pairs", "margin"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        scores = outputs.logits[:, 0]
        better, worse = inputs["better"], inputs["worse"]
        loss = kwise_loss(scores, better, worse, inputs["group"], inputs["margin"], int(inputs["num_groups"]))
        with torch.no_grad():
            diff = scores[better] - scores[worse]
            self._metrics[mode]["accuracy"].append(((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item())
            self._metrics[mode]["margin"].append(diff.mean().item())
            self._metrics[mode]["mean_reward"].append(scores.mean().item())
        return (loss, outputs) if return_outputs else loss


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    rm = cfg.rm
    init_from = resolve_inputs(cfg, "rm")["init_from"]
    tokenizer = load_tokenizer(cfg.model)
    data = with_collected(cfg, "RM")
    bundle = load_data(data, tokenizer)
    train = [c for c in bundle.require("rm", "comparisons", "rm") if any(True for _ in c.pairs())]
    evals = [c for c in bundle.require("eval", "comparisons", "rm") if any(True for _ in c.pairs())]
    stage_run.manifest["inputs"] = {"data": describe_source(data), "init_from": init_from}
    stage_run.manifest["data"] = bundle.summary()
    stage_run.manifest["data"]["rm_comparisons_all_tied"] = len(bundle.splits["rm"].comparisons) - len(train)

    # The Trainer's arguments before the model: with a ZeRO-3 config they make from_pretrained
    # load each rank's shard only, not the whole model on every rank.
    args = trainer_args(RewardConfig, rm, cfg, disable_dropout=False, prediction_loss_only=True,
                        remove_unused_columns=False, max_length=None)
    torch.manual_seed(cfg.seed)  # the new score head's initial weights
    model = load_reward_model(cfg.model, tokenizer, init_from, dropout=rm.dropout)
    tracker = Tracker(cfg.stage_dir, "rm", cfg.logger.backend.value, cfg.logger.wandb_project)
    stop = stop_request()
    lora = peft_lora_config(cfg.model.lora, "score") if cfg.model.lora.enabled else None
    trainer = KWiseRewardTrainer(model=model, args=args, processing_class=tokenizer, peft_config=lora,
                                 data_collator=KWiseCollator(tokenizer.pad_token_id),
                                 train_dataset=comparison_dataset(tokenizer, train),
                                 eval_dataset=comparison_dataset(tokenizer, evals),
                                 callbacks=stage_callbacks("rm", rm, tracker, stop))
    # A comparison's K answers share one batch element: a step's memory grows with K, not only
    # with per_device_batch_size (collect.answers_per_prompt=8 at 8 a step: 64 sequences)
    widest = max((len(c.responses) for c in train), default=0)
    log.info("RM on %d comparisons (%d pairs), %d eval comparisons; a step reads up to %d sequences "
             "(rm.per_device_batch_size %d x up to %d answers a comparison)", len(train),
             sum(len(list(c.pairs())) for c in train), len(evals), rm.per_device_batch_size * widest,
             rm.per_device_batch_size, widest)
    trainer.train(resume_from_checkpoint=last_checkpoint(cfg))
    if stop.signal_name:
        stop.stop(f"checkpoint-{trainer.state.global_step}")

    stage_run.metrics.update(loss_summary(trainer))
    # Scoring below runs on every rank over all examples (same result everywhere): simpler than
    # sharing them out, and a small part of the stage.
    with full_weights(trained_model(trainer)) as model:
        eval_metrics, histograms = _score_and_evaluate(rm, model, tokenizer, bundle, evals, stage_run)
    stage_run.metrics.update(eval_metrics)
    tracker.log({f"final/{k}": v for k, v in stage_run.metrics.items() if isinstance(v, (int, float))},
                trainer.state.global_step)
    tracker.histograms({f"eval/{k}": v for k, v in histograms.items()}, trainer.state.global_step)
    tracker.close()
    stage_run.manifest["distributed"] = describe(trained_model(trainer), cfg)
    save_final(trained_model(trainer), tokenizer, cfg.stage_dir / "final")
    log.info("RM done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in stage_run.metrics.items()})
    log.info("final model: %s", cfg.stage_dir / "final")



def _score_and_evaluate(rm, model, tokenizer, bundle, evals, stage_run):
    if rm.normalize:
        demos = bundle.require("sft", "demonstrations", "rm")[: rm.normalize_max_demonstrations]
        stage_run.metrics.update(normalize(model, tokenizer, demos))
        held_out = bundle.splits["eval"].demonstrations
        if held_out:
            stage_run.metrics["eval_demonstration_score_mean"] = score(
                model, tokenizer, [d.prompt for d in held_out], [d.response for d in held_out]).mean().item()
    metrics, histograms = evaluate(model, tokenizer, evals, bundle.gold_scorer)
    if bundle.gold_scorer is gold_score and rm.wrong_digit_pairs:  # the toy task's blind spot
        prompts = [p.prompt for p in bundle.splits["eval"].prompts[: rm.wrong_digit_pairs]]
        metrics.update(wrong_digit_accuracy(model, tokenizer, prompts))
    return metrics, histograms


def wrong_digit_accuracy(model, tokenizer, prompts) -> dict[str, float]:
    """The toy RM's blind spot: how often it scores each prompt's exact answer above the same
    answer with one digit wrong (the flaw stage 3 learns to produce against it; ties count half),
    with a 95% interval. The wrong answers are drawn with a fixed seed: every RM gets the same pairs."""
    rng = random.Random(0)
    pairs = [Comparison(p, (answer(p), wrong_digit(p, rng)), (0, 1)) for p in prompts]
    scores, _, _ = score_comparisons(model, tokenizer, pairs)
    right = np.array([1.0 if s[0] > s[1] else 0.5 if s[0] == s[1] else 0.0 for s in scores])
    half = 1.96 * right.std() / np.sqrt(len(right)) if len(right) > 1 else 0.0
    return {"wrong_digit_accuracy": float(right.mean()), "wrong_digit_accuracy_low": float(right.mean() - half),
            "wrong_digit_accuracy_high": float(right.mean() + half), "wrong_digit_pairs": len(right)}


def normalize(model, tokenizer, demos) -> dict[str, float]:
    """Stores the bias that makes `demos` score mean 0 (InstructGPT) with the raw mean and std."""
    clear_normalization(model)  # a re-run: measure raw scores afresh
    raw = score(model, tokenizer, [d.prompt for d in demos], [d.response for d in demos], normalized=False)
    return set_normalization(model, raw)


def evaluate(model, tokenizer, comparisons: list[Comparison], gold_scorer=None):
    """The eval split's pairwise figures as `rlhf stage=evaluate` reports them (its
    pairwise_metrics: accuracy by K and by source, score ties as halves, the length baseline on
    the same pairs, margins, and with a gold scorer the accuracy against its noise-free order),
    named eval_* (gold_* as before), and the best and worst responses' scores."""
    scores, lengths, gold = score_comparisons(model, tokenizer, comparisons, gold_scorer)
    metrics = pairwise_metrics(comparisons, scores, lengths, gold)
    named = {(k if k.startswith("gold_") else f"eval_{k}"): v for k, v in metrics.items()}
    return named, {"score_best": np.array([s[0] for s in scores]), "score_worst": np.array([s[-1] for s in scores])}
