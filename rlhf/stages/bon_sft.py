"""Stage 3 offline, `rlhf stage=bon_sft`: best-of-n distillation (rejection-sampling fine-tuning,
as in Llama 2; expert iteration when run for several rounds).

Each round: n answers per prompt of the `ppo` split sampled from the current policy, the one the
reward source (`reward=`: the reward model, or a function) scores best kept, and the policy
fine-tuned on those picks with the SFT stage's trainer, on exactly the sampled tokens. Round 1
starts from the SFT policy; round k + 1 samples from and fine-tunes round k's result.

    runs/<run>/bon_sft/round_<k>/picks.jsonl           each prompt's pick, its score, the n
                                                       candidates' scores (and gold score)
    runs/<run>/bon_sft/checkpoints/round_<k>/final     round k's policy, for k < rounds
    runs/<run>/bon_sft/final                           the last round's policy: the result

A rerun with the same run name keeps the rounds whose policy exists and resumes the round in
progress from its last Trainer checkpoint (checkpoints/round_<k>/checkpoint-<step>), as SFT
does. The earlier rounds' policies live under checkpoints/ so that the pipeline drops them with
the checkpoints when a setting changes.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math

from rlhf.config import ConfigError, RLHFConfig
from rlhf.core import distributed
from rlhf.core.artifacts import StageRun, save_final, write_atomic
from rlhf.core.distributed import describe, device, is_main_process
from rlhf.core.preemption import stop_request
from rlhf.core.tracking import Tracker
from rlhf.data import describe_source, encode_prompts, load_data
from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer
from rlhf.sampling import best_of_n, build_reward
from rlhf.stages import resolve_inputs, reward_models
from rlhf.stages.sft import sft_dataset, sft_trainer, token_dataset
from rlhf.stages.training import gold_metrics, last_checkpoint, loss_summary, stage_callbacks, trained_model

log = logging.getLogger(__name__)

SEED_OFFSET = 2_000_003  # candidates' seeds, apart from compare's and the gold evaluation's


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    b = cfg.bon_sft
    inputs = {**resolve_inputs(cfg, "bon_sft"), **reward_models(cfg)}
    tokenizer = load_tokenizer(cfg.model)
    bundle = load_data(cfg.data, tokenizer)
    prompts = [p.prompt for p in bundle.require("ppo", "prompts", "bon_sft")][: b.prompts]
    # the eval loss reads the eval split's demonstrations; prompt-only data (data=ifeval, where the
    # verifier picks) has none, and the picks then train without an eval loss
    eval_demos = bundle.splits["eval"].demonstrations
    if not eval_demos:
        log.info("bon_sft: the eval split has no demonstrations, so no eval loss (bon_sft.eval_every_steps=0)")
        b = dataclasses.replace(b, eval_every_steps=0)
    reward = build_reward(cfg.reward, lambda path: load_reward_model(cfg.model, tokenizer, path).to(device()).eval(), tokenizer,
                          inputs, bundle.gold_scorer)
    stage_run.manifest["inputs"] = {"data": describe_source(cfg.data), **inputs, "reward": reward.describe()}
    stage_run.manifest["data"] = {**bundle.summary(), "prompts": len(prompts)}
    tracker = Tracker(cfg.stage_dir, "bon_sft", cfg.logger.backend.value, cfg.logger.wandb_project)
    stop = stop_request()

    policy_from = inputs["init_from"]
    for k in range(1, b.rounds + 1):
        last = k == b.rounds
        checkpoints = cfg.stage_dir / "checkpoints" / f"round_{k}"
        out = cfg.stage_dir / "final" if last else checkpoints / "final"
        if not last and out.exists():  # done in an earlier, interrupted run
            log.info("bon_sft round %d: %s exists, kept", k, out)
            policy_from = str(out)
            continue
        picks, pick_metrics = _picks(cfg, k, policy_from, reward, tokenizer, prompts, bundle.gold_scorer)
        _write_picks(cfg.stage_dir / f"round_{k}" / "picks.jsonl", picks)
        log.info("bon_sft round %d: best of %d on %d prompts: %s", k, b.n, len(prompts),
                 {m: round(v, 4) for m, v in pick_metrics.items()})
        kept = [p for p in picks if p["ended"]]  # an answer cut at max_new_tokens teaches no ending
        if not kept:
            raise ConfigError(f"bon_sft round {k}: none of the {len(picks)} picks ended with EOS within "
                              f"{b.max_new_tokens or cfg.data.max_response_tokens} new tokens, so there is nothing to "
                              "fine-tune on; raise bon_sft.max_new_tokens, or bon_sft.n (more answers per prompt)")
        trainer = sft_trainer(cfg, b, tokenizer, policy_from,
                              token_dataset(encode_prompts(tokenizer, [p["prompt"] for p in kept]),
                                            [p["token_ids"] for p in kept]),
                              sft_dataset(tokenizer, eval_demos) if eval_demos else None,
                              stage_callbacks("bon_sft", b, tracker, stop),
                              checkpoints=checkpoints)
        log.info("bon_sft round %d: fine-tuning %s on %d picks (%d dropped: no EOS)", k, policy_from, len(kept),
                 len(picks) - len(kept))
        trainer.train(resume_from_checkpoint=last_checkpoint(cfg, checkpoints))
        if stop.signal_name:
            stop.stop(f"round {k}, checkpoint-{trainer.state.global_step}")
        metrics = {**{f"picks_{m}": v for m, v in pick_metrics.items()}, "picks_trained": len(kept),
                   **loss_summary(trainer), **({"eval_loss": trainer.evaluate()["eval_loss"]} if eval_demos else {})}
        if last:
            metrics.update(gold_metrics(cfg, b, bundle, trainer, tokenizer))
        tracker.log({f"round_{k}/{m}": v for m, v in metrics.items() if isinstance(v, (int, float))}, k)
        stage_run.metrics.update(metrics if b.rounds == 1 else {f"round_{k}/{m}": v for m, v in metrics.items()})
        if last:
            stage_run.manifest["distributed"] = describe(trained_model(trainer), cfg)
        save_final(trained_model(trainer), tokenizer, out)
        policy_from = str(out)
        del trainer
        gc.collect()
    tracker.close()
    log.info("bon_sft done: %s", {m: round(v, 4) if isinstance(v, float) else v for m, v in stage_run.metrics.items()})
    log.info("final model: %s", cfg.stage_dir / "final")


def _picks(cfg: RLHFConfig, k: int, policy_from: str, reward, tokenizer, prompts, gold_scorer
           ) -> tuple[list[dict], dict]:
    """Round k's best-of-n picks of every prompt (each rank samples its share; all get them all).
    A candidate that never emitted EOS has score null and is picked only when none ended."""
    b = cfg.bon_sft
    mine = list(range(distributed.rank(), len(prompts), distributed.world_size()))
    policy = load_causal_lm(cfg.model, tokenizer, policy_from).to(device()).eval()
    found = best_of_n(policy, reward, tokenizer, [prompts[i] for i in mine],
                      seeds=[cfg.seed + SEED_OFFSET + (k - 1) * b.n + j for j in range(b.n)],
                      max_new_tokens=b.max_new_tokens or cfg.data.max_response_tokens, temperature=b.temperature,
                      batch_size=b.generation_batch_size, unfinished_score=float("-inf"))
    del policy
    picks = []
    for row, (i, s) in enumerate(zip(mine, found.best)):
        scores = [float(x) if math.isfinite(x) else None for x in found.scores[:, row].tolist()]
        picks.append({"prompt_index": i, "prompt": prompts[i], "response": s.text, "token_ids": list(s.token_ids),
                      "ended": s.ended, "score": scores[int(found.scores[:, row].argmax())],
                      "candidate_scores": scores,
                      "gold_score": gold_scorer(prompts[i], s.text) if gold_scorer else None})
    picks = sorted(distributed.gather_objects(picks), key=lambda p: p["prompt_index"])
    every = [x for p in picks for x in p["candidate_scores"] if x is not None]
    best = [p["score"] for p in picks if p["score"] is not None]
    metrics = {"score_mean": _mean(best), "candidate_score_mean": _mean(every),
               "ended_rate": sum(p["ended"] for p in picks) / max(len(picks), 1)}
    if gold_scorer:
        metrics["gold_mean"] = _mean([p["gold_score"] for p in picks])
    return picks, metrics


def _mean(values) -> float:
    return sum(values) / len(values) if values else float("nan")


def _write_picks(path, picks: list[dict]) -> None:
    if is_main_process():
        rows = [{key: value for key, value in p.items() if key != "token_ids"} for p in picks]
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    distributed.barrier()
