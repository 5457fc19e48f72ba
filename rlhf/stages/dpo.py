"""Stage 3 without a reward model, `rlhf stage=dpo`: Direct Preference Optimisation (Rafailov et
al. 2023) on the `rm` split's comparisons, from the SFT policy, which is also the frozen reference.

trl's DPOTrainer does the training and owns the loss (`dpo.loss_type`: sigmoid is DPO, ipo is
IPO, and the others trl offers). We hand it pairs already tokenized by the data layer (prompt ids,
chosen ids, rejected ids, each response closed by EOS), so DPO trains on exactly the token
sequences SFT trained on and PPO samples. K-wise rankings become pairs by `dpo.pairs`
(rlhf.data.preference_pairs). The reference is a second copy of the starting policy loaded from
the same folder (with LoRA: the policy with its adapter switched off, as trl does it).

Reported: trl's reward accuracy and margins on the eval split's comparisons; the implicit-reward
accuracy on train pairs, measured after training by this module; and on the toy task the gold
score of greedy and sampled answers, as SFT reports it.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from rlhf.config import RLHFConfig
from rlhf.core.artifacts import StageRun
from rlhf.core.distributed import full_weights
from rlhf.core.preemption import stop_request
from rlhf.core.tracking import Tracker
from rlhf.data import describe_source, encode_prompts, encode_responses, load_data, preference_pairs
from rlhf.models import load_causal_lm, load_tokenizer, peft_lora_config
from rlhf.sampling import Sample, response_logprob_sums
from rlhf.stages import resolve_inputs, with_collected
from rlhf.stages.training import (finish, gold_metrics, last_checkpoint, loss_summary, stage_callbacks, trained_model,
                                  trainer_args)

log = logging.getLogger(__name__)


def dpo_dataset(tokenizer, triples) -> Dataset:
    """(prompt, chosen, rejected) triples as the token ids trl's DPO collator reads."""
    prompts = encode_prompts(tokenizer, [t[0] for t in triples])
    chosen = encode_responses(tokenizer, [t[1] for t in triples])
    rejected = encode_responses(tokenizer, [t[2] for t in triples])
    return Dataset.from_dict({
        "prompt_ids": prompts, "chosen_ids": chosen, "rejected_ids": rejected,
        # tokens of the longer sequence, which group_by_length sorts by
        "length": [len(p) + max(len(c), len(r)) for p, c, r in zip(prompts, chosen, rejected)],
    })


class PretokenizedDPOTrainer(DPOTrainer):
    def _prepare_dataset(self, dataset, *args, **kwargs):
        return dataset  # tokenized by the data layer: its template, not trl's, frames the prompt

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, "length"]  # kept for group_by_length's sampler


def build_trainer(cfg: RLHFConfig, tokenizer, bundle, callbacks=()) -> tuple[PretokenizedDPOTrainer, dict]:
    """The trainer with its policy, reference and datasets, and what went into them (the train
    triples, and counts for the manifest). Separate from `run` so that tests can look at a trainer before and after steps."""
    o = cfg.dpo
    init_from = resolve_inputs(cfg, "dpo")["init_from"]
    train = preference_pairs(bundle.require("rm", "comparisons", "dpo"), o.pairs)
    evals = preference_pairs(bundle.require("eval", "comparisons", "dpo"), o.pairs)
    # The Trainer's arguments before the models: with a ZeRO-3 config they make from_pretrained
    # load each rank's shard only.
    losses = {"loss_type": [o.loss_type, "sft"], "loss_weights": [1.0, o.sft_loss_coef]} if o.sft_loss_coef else \
        {"loss_type": [o.loss_type]}
    args = trainer_args(DPOConfig, o, cfg, beta=o.beta, **losses, label_smoothing=o.label_smoothing,
                        max_length=None,  # the data layer already holds every sequence within its limits
                        remove_unused_columns=False, dataset_num_proc=None)
    model = load_causal_lm(cfg.model, tokenizer, init_from, dropout=o.dropout)
    lora = peft_lora_config(cfg.model.lora, "causal") if cfg.model.lora.enabled else None
    # With LoRA trl takes the policy with its adapter off as the reference: no second copy.
    reference = None if lora else load_causal_lm(cfg.model, tokenizer, init_from).eval().requires_grad_(False)
    trainer = PretokenizedDPOTrainer(model=model, ref_model=reference, args=args, processing_class=tokenizer,
                                     peft_config=lora, train_dataset=dpo_dataset(tokenizer, train),
                                     eval_dataset=dpo_dataset(tokenizer, evals), callbacks=list(callbacks))
    info = {"init_from": init_from, "reference": f"{init_from} (frozen copy)" if reference is not None
            else f"{init_from} with the LoRA adapter off", "train": train, "train_pairs": len(train),
            "eval_pairs": len(evals), "pairs": o.pairs}
    return trainer, info


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    o = cfg.dpo
    tokenizer = load_tokenizer(cfg.model)
    bundle = load_data(with_collected(cfg, "DPO"), tokenizer)  # the RM's comparisons, collected ones too
    tracker = Tracker(cfg.stage_dir, "dpo", cfg.logger.backend.value, cfg.logger.wandb_project)
    stop = stop_request()
    trainer, info = build_trainer(cfg, tokenizer, bundle, stage_callbacks("dpo", o, tracker, stop))
    stage_run.manifest["inputs"] = {"data": describe_source(cfg.data), "init_from": info["init_from"],
                                    "reference": info["reference"]}
    stage_run.manifest["data"] = {**bundle.summary(), "train_pairs": info["train_pairs"],
                                  "eval_pairs": info["eval_pairs"], "pairs": info["pairs"]}
    log.info("DPO (%s, beta %g) on %d pairs from the rm split (%s), %d eval pairs", o.loss_type, o.beta,
             info["train_pairs"], o.pairs, info["eval_pairs"])
    trainer.train(resume_from_checkpoint=last_checkpoint(cfg))
    if stop.signal_name:
        stop.stop(f"checkpoint-{trainer.state.global_step}")

    stage_run.metrics.update(loss_summary(trainer))
    evaluated = trainer.evaluate()
    stage_run.metrics.update({"eval_loss": evaluated["eval_loss"],
                              "eval_reward_accuracy": evaluated.get("eval_rewards/accuracies"),
                              "eval_reward_margin": evaluated.get("eval_rewards/margins")})
    if o.train_accuracy_pairs > 0:  # every rank measures all of it (same result everywhere)
        pairs = info["train"][: o.train_accuracy_pairs]
        with full_weights(trained_model(trainer)) as policy, _reference_of(trainer, policy) as reference:
            stage_run.metrics["train_reward_accuracy"] = implicit_reward_accuracy(policy, reference, tokenizer, pairs)
    stage_run.metrics.update(gold_metrics(cfg, o, bundle, trainer, tokenizer))
    finish(cfg, stage_run, trainer, tokenizer, tracker, "DPO")


@contextlib.contextmanager
def _reference_of(trainer, policy):
    if trainer.ref_model is None:  # LoRA: the policy without its adapter
        with policy.disable_adapter():
            yield policy
    else:
        with full_weights(trainer.ref_model) as reference:
            yield reference


@torch.no_grad()
def implicit_reward_accuracy(policy, reference, tokenizer, triples, batch_size: int = 64) -> float:
    """How often DPO's implicit reward, log pi(y|x) - log pi_ref(y|x), ranks the chosen response
    above the rejected one (ties count half; before any step every pair is a tie: 0.5)."""
    def samples(column):
        ids = encode_responses(tokenizer, [t[column] for t in triples])
        return [Sample(t[0], t[column], tuple(i), True, 0.0) for t, i in zip(triples, ids)]

    margins = []
    for column in (1, 2):
        batch = samples(column)
        margins.append(response_logprob_sums(policy, tokenizer, batch, 1.0, batch_size)
                       - response_logprob_sums(reference, tokenizer, batch, 1.0, batch_size))
    diff = margins[0] - margins[1]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()
