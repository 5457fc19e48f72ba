"""`rlhf stage=collect`: the policy's own answers, to be ranked: the next reward model's data.

InstructGPT collected most of its comparisons on the outputs of its current policies, so that
each round's reward model saw the mistakes the policy was making. This stage samples
`collect.answers_per_prompt` answers to each prompt (of the `rm` and `eval` splits by default)
from the previous round's policy (or several, mixed), drops exact duplicates, and writes

    runs/<run>[/round_<n>]/collect/comparisons.jsonl

in the data layer's `ranked` format, one prompt a line, each answer with its provenance:

    {"prompt": "sort ascending: 3 1 2", "split": "rm", "labeller": "gold (label_noise 0.1)",
     "responses": [{"text": "1 2 3", "rank": 0, "policy": "runs/a/ppo/final", "seed": 1000003,
                    "temperature": 1.0, "ended": true}, ...]}

Ranks: `collect.labeller=gold` (the toy task) fills them at once with the simulated labeller
(rlhf.data.toy.gold_ranking: the gold order, one adjacent pair swapped with the built-in
comparisons' label noise); `verifier` (data=ifeval) ranks by the share of the prompt's
instructions each answer follows strictly, with the same noise (the synthetic-gold protocol of
Gao et al. 2022 on real text); `none` leaves them null for a person to fill in (docs/collect.md),
and the reward model refuses the file until they are. The RM stage of this round reads the file
as one more source (rm.use_collected), its rm-split prompts for training and its eval-split
prompts for the per-source accuracy.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

from rlhf.config import ConfigError, RLHFConfig
from rlhf.core import distributed
from rlhf.core.artifacts import StageRun, write_atomic
from rlhf.core.distributed import device, is_main_process
from rlhf.data import describe_source, load_data
from rlhf.data.records import PromptLike, prompt_key, simulated_ranking
from rlhf.data.toy import gold_ranking, gold_score, wrong_digit_near_miss
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.sampling import VerifierReward, generate
from rlhf.stages import resolve_inputs

log = logging.getLogger(__name__)

SEED_OFFSET = 3_000_017  # answers' seeds, apart from compare's, bon_sft's and the gold evaluation's


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    c = cfg.collect
    policies = [resolve_inputs(cfg, "collect")["policy"], *c.mix_with]
    tokenizer = load_tokenizer(cfg.model)
    bundle = load_data(cfg.data, tokenizer)
    prompts = _prompts(cfg, bundle)
    if c.labeller == "gold" and bundle.gold_scorer is None:
        raise ConfigError("collect.labeller=gold ranks by the toy task's gold scorer, which this data has not: "
                          "set collect.labeller=none and rank the file (docs/collect.md)")
    share = None  # labeller=verifier: the share of the prompt's instructions an answer follows, strictly
    if c.labeller == "verifier":
        if not hasattr(bundle.gold_scorer, "verdict"):
            raise ConfigError("collect.labeller=verifier ranks by the prompts' verifiable instructions, which this "
                              "data has not: use data=ifeval, or collect.labeller=none and rank the file "
                              "(docs/collect.md)")
        share = VerifierReward(bundle.gold_scorer, "strict", "fraction")
    stage_run.manifest["inputs"] = {"data": describe_source(cfg.data), "policies": policies,
                                    "prompts_file": c.prompts_file}
    log.info("collect: %d answers to each of %d prompts from %s", c.answers_per_prompt, len(prompts),
             " + ".join(policies))

    out = cfg.stage_dir / "comparisons.jsonl"
    by_hand = _ranked_by_hand(out)
    if by_hand:
        raise ConfigError(f"{out} holds {by_hand} record(s) ranked by hand (their labeller is not the simulated one): "
                          "collecting again would overwrite that work. Move the file away, or delete it, to collect "
                          "afresh")
    answers = _sample(cfg, policies, tokenizer, [p for p, _ in prompts])
    noise = cfg.data.toy.label_noise if c.label_noise is None else c.label_noise
    records, counts = [], Counter()
    for (prompt, split), candidates in zip(prompts, answers):
        distinct = []  # the first answer of each text, in sample order
        for a in candidates:
            if all(a["text"] != b["text"] for b in distinct):
                distinct.append(a)
        counts["duplicate_answers"] += len(candidates) - len(distinct)
        if len(distinct) < 2:
            counts["prompts_one_distinct_answer"] += 1
            continue
        record = {"prompt": _jsonable(prompt), "split": split, "labeller": None, "responses": distinct}
        if c.labeller in ("gold", "verifier"):
            rng = random.Random(f"{cfg.seed}\0{prompt_key(prompt)}")
            texts = [a["text"] for a in distinct]
            if c.labeller == "gold":
                texts, ranks = gold_ranking(prompt, texts, noise, rng)
            else:
                texts, ranks = simulated_ranking(texts, share.score_texts([prompt] * len(texts), texts).tolist(),
                                                 noise, rng)
            if len(set(ranks)) < 2:
                counts["prompts_all_tied"] += 1  # every answer as good as the others: nothing to learn
                continue
            by_text = {a["text"]: a for a in distinct}
            record["labeller"] = f"{c.labeller} (label_noise {noise})"
            record["responses"] = [{**by_text[t], "rank": r} for t, r in zip(texts, ranks)]
        records.append(record)

    if not records:
        raise ConfigError(f"collect: no prompt got two different answers worth ranking ({dict(counts)}); raise "
                          "collect.answers_per_prompt or collect.temperature")
    if is_main_process():
        write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    distributed.barrier()
    stage_run.metrics.update(_summary(records, answers, prompts, counts, bundle.gold_scorer, policies))
    stage_run.manifest["data"] = {"prompts": len(prompts), "records": len(records), **counts}
    log.info("collect: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in stage_run.metrics.items()})
    if c.labeller == "none":
        log.info("collect: ranks are empty: rank %s (docs/collect.md), then train the reward model with "
                 "`rlhf stage=rm run=%s%s`", out, cfg.run, f" loop.round={cfg.loop.round}" if cfg.loop.round > 1 else "")
    log.info("comparisons: %s", out)


def _ranked_by_hand(path: Path) -> int:
    """Records of an earlier collection that a person (or any tool but the simulated labeller) ranked."""
    if not path.exists():
        return 0
    found = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        labeller = record.get("labeller") if isinstance(record, dict) else None
        found += bool(labeller) and not str(labeller).startswith(("gold", "verifier"))
    return found


def _prompts(cfg: RLHFConfig, bundle) -> list[tuple[PromptLike, str]]:
    """(prompt, where it came from): the first collect.max_prompts of each split, or of the file."""
    c = cfg.collect
    if c.prompts_file:
        path = Path(c.prompts_file)
        if not path.is_file():
            raise ConfigError(f"collect.prompts_file={path}: no such file (one prompt per line)")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ConfigError(f"collect.prompts_file={path} has no prompts (one prompt per line, blank lines skipped)")
        return [(line, path.name) for line in lines[: c.max_prompts]]
    found = []
    for split in c.splits:
        found += [(p.prompt, split) for p in bundle.require(split, "prompts", "collect")[: c.max_prompts]]
    return found


def _sample(cfg: RLHFConfig, policies: list[str], tokenizer, prompts: list[PromptLike]) -> list[list[dict]]:
    """Each prompt's answers, answer j from policies[j mod len(policies)] with seed
    seed + SEED_OFFSET + j (every rank samples its share of the prompts; all get them all)."""
    from tqdm.auto import tqdm

    c = cfg.collect
    mine = list(range(distributed.rank(), len(prompts), distributed.world_size()))
    rows: dict[int, list[dict]] = {i: [] for i in mine}
    progress = tqdm(total=c.answers_per_prompt, desc="collect", unit="answer a prompt",
                    disable=not is_main_process())
    for k, path in enumerate(policies):
        answer_ids = [j for j in range(c.answers_per_prompt) if j % len(policies) == k]
        if not answer_ids:
            continue
        policy = load_causal_lm(cfg.model, tokenizer, path).to(device()).eval()
        for j in answer_ids:
            seed = cfg.seed + SEED_OFFSET + j
            samples = generate(policy, tokenizer, [prompts[i] for i in mine],
                               max_new_tokens=c.max_new_tokens or cfg.data.max_response_tokens,
                               temperature=c.temperature, batch_size=c.batch_size, seed=seed)
            for i, s in zip(mine, samples):
                rows[i].append({"text": s.text, "rank": None, "policy": path, "seed": seed,
                                "temperature": c.temperature, "ended": s.ended})
            progress.update(1)
        del policy
    progress.close()
    gathered = dict(pair for part in distributed.gather_objects([list(rows.items())]) for pair in part)
    return [sorted(gathered[i], key=lambda a: a["seed"]) for i in range(len(prompts))]


def _summary(records, answers, prompts, counts, gold_scorer, policies) -> dict:
    every = [a for row in answers for a in row]
    metrics = {"prompts": len(prompts), "records": len(records), "answers": len(every),
               "answers_ranked": sum(len(r["responses"]) for r in records),
               "ended_rate": sum(a["ended"] for a in every) / max(len(every), 1), **counts}
    if gold_scorer:
        # how good the policy's answers are, and how often it gives the RM's blind spot (the
        # exact answer with one digit wrong): what the next reward model gets to see
        for k, path in enumerate(policies):
            mine = [(p, a) for (p, _), row in zip(prompts, answers) for a in row if a["policy"] == path]
            name = "" if len(policies) == 1 else f"policy_{k}/"
            metrics[f"{name}gold_mean"] = sum(gold_scorer(p, a["text"]) for p, a in mine) / max(len(mine), 1)
            metrics[f"{name}exact_rate"] = sum(gold_scorer(p, a["text"]) == 1.0 for p, a in mine) / max(len(mine), 1)
            if gold_scorer is gold_score:  # the toy task's
                metrics[f"{name}one_wrong_digit_rate"] = (sum(wrong_digit_near_miss(p, a["text"]) for p, a in mine)
                                                          / max(len(mine), 1))
    return metrics


def _jsonable(prompt: PromptLike):
    return prompt if isinstance(prompt, str) else [{"role": m["role"], "content": m["content"]} for m in prompt]
