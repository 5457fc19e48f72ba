"""`rlhf stage=evaluate`: a reward model on comparisons, or policies on prompts, from any data
source (`data=...`, `data.path=...`), without training.

    reward model  the RM (evaluate.reward_from, default this run's rm) scores every response of
                  the source's comparisons: pairwise accuracy overall, by K and by source, score
                  ties, the distribution of score(better) - score(worse), and the length
                  baseline on the same pairs (how often the better reply is the longer one), so
                  an accuracy can be read against what length alone gets; on a task with a gold
                  scorer (the toy task) the RM's and the labels' agreement with it
    policies      evaluate.policies answer the source's prompts and are judged as compare judges
                  them (compare's `judge`: RM and gold scores, win rates against
                  evaluate.baseline with bootstrap intervals)
    outputs       runs/<run>/evaluate/: results.json, report.md, comparisons.jsonl (per
                  comparison: scores and lengths), samples.jsonl (the policies' answers); the
                  reward model's table is printed as well

`pairwise_metrics` is the one place these figures are computed: the RM stage's eval metrics
come from it too. Under torchrun every rank scores every comparison (as the RM stage does) and
the policies' prompts are shared out; rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Callable, Optional, Sequence

import numpy as np

from rlhf.config import SPLITS, CompareConfig, ConfigError, RLHFConfig, SplitConfig
from rlhf.core.artifacts import StageRun, write_atomic, write_json
from rlhf.core.distributed import device, is_main_process
from rlhf.data import Comparison, DataError, describe_source, encode_responses, load_data
from rlhf.models import load_reward_model, load_tokenizer
from rlhf.sampling import score
from rlhf.stages import output_path, resolve_inputs
from rlhf.stages.compare import headline_metrics, judge
from rlhf.stages.compare.report import report_lines
from rlhf.stages.compare.stats import bootstrap_ci

log = logging.getLogger(__name__)

TIE = 1e-6  # scores closer than this are a tie, half a point: float noise, not a preference
MARGIN_PERCENTILES = (10, 25, 50, 75, 90)


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    e = cfg.evaluate
    out = cfg.stage_dir
    reward_from = resolve_inputs(cfg, "evaluate").get("reward_from")
    policies = dict(e.policies or {})
    if reward_from is None and not policies:
        raise ConfigError(f"evaluate has nothing to measure: evaluate.reward_from is null and "
                          f"{output_path(cfg, 'rm')} does not exist, and evaluate.policies is empty. Set "
                          "evaluate.reward_from=<RM folder or hub id>, evaluate.policies='{name: <folder>}', or both")
    tokenizer = load_tokenizer(cfg.model)
    bundle = load_data(_data_config(cfg), tokenizer)
    split = bundle.splits["eval" if e.split == "all" else e.split]  # split=all: every split holds every record
    where = f"{bundle.source} (evaluate.split={e.split})"
    stage_run.manifest["inputs"] = {"data": describe_source(cfg.data), "split": e.split, "reward_from": reward_from,
                                    "policies": policies}
    stage_run.manifest["data"] = bundle.summary()

    rm = None
    if reward_from is not None:
        try:
            rm = load_reward_model(cfg.model, tokenizer, reward_from).to(device()).eval()
        except OSError as err:  # what transformers raises for a folder or hub id it cannot find
            raise ConfigError(f"evaluate.reward_from={reward_from!r}: cannot load it ({err}); give a reward "
                              f"model's folder (e.g. runs/<run>/rm/final) or a hub id") from err

    results: dict = {"run": cfg.run, "data": describe_source(cfg.data), "split": e.split, "reward_from": reward_from,
                     "rm_on_comparisons": None, "policies_on_prompts": None}
    with_pairs = [c for c in split.comparisons if any(True for _ in c.pairs())]  # all tied: nothing to order
    if rm is not None and with_pairs:
        comparisons = with_pairs[: e.max_comparisons]
        log.info("evaluate: scoring %d comparisons of %s with %s", len(comparisons), where, reward_from)
        scores, lengths, gold = score_comparisons(rm, tokenizer, comparisons, bundle.gold_scorer, e.batch_size)
        metrics = pairwise_metrics(comparisons, scores, lengths, gold, resamples=e.bootstrap_resamples,
                                   confidence=e.confidence, seed=cfg.seed)
        metrics["all_tied_skipped"] = len(split.comparisons) - len(with_pairs)
        results["rm_on_comparisons"] = metrics
        stage_run.metrics.update(metrics)
        if is_main_process():
            print(pairwise_table(metrics, f"Reward model {reward_from} on {where}"), flush=True)
            write_atomic(out / "comparisons.jsonl", "".join(
                json.dumps(row) + "\n" for row in comparison_rows(comparisons, scores, lengths, gold)))
    elif rm is not None and not policies:
        raise DataError(f"{where} has no comparisons with a better and a worse response, so the reward model has "
                        f"nothing to order: give comparisons (data.format=pairwise, ranked, hh_rlhf, oasst), or "
                        f"evaluate.policies to answer this source's prompts. It holds {split.counts()}")
    elif rm is not None:
        log.info("evaluate: %s has no comparisons; the reward model judges the policies' answers only", where)

    if policies:
        results["policies_on_prompts"] = _judge_policies(cfg, policies, split, where, out, tokenizer, rm,
                                                         bundle.gold_scorer)
        if results["policies_on_prompts"] is not None:
            stage_run.metrics.update(headline_metrics(results["policies_on_prompts"]))
    if not is_main_process():
        return
    write_json(out / "results.json", results)
    _write_report(results, out)
    log.info("evaluate: %s", out / "report.md")


def _data_config(cfg: RLHFConfig):
    """evaluate.split=all reads every record, whatever split its prompt hashes to (and those
    outside every split when the fractions sum below 1): every split then holds them all."""
    if cfg.evaluate.split != "all":
        return cfg.data
    everything = SplitConfig(sft=1.0, rm=1.0, ppo=1.0, eval=1.0, salt=cfg.data.splits.salt, shared=list(SPLITS))
    unpinned = [dataclasses.replace(src, split=None) for src in cfg.data.sources]  # every source in every split
    return dataclasses.replace(cfg.data, splits=everything, split=None, sources=unpinned)


def _judge_policies(cfg, policies, split, where, out, tokenizer, rm, gold_scorer) -> Optional[dict]:
    e = cfg.evaluate
    if rm is None and gold_scorer is None:
        raise ConfigError(f"evaluate.policies need a judge: no reward model ({output_path(cfg, 'rm')} does not "
                          f"exist and evaluate.reward_from is null) and data {cfg.data.name!r} has no gold scorer. "
                          f"Set evaluate.reward_from=<RM folder>")
    prompts, sources = [p.prompt for p in split.prompts][: e.prompts], [p.source for p in split.prompts][: e.prompts]
    if not prompts:
        raise DataError(f"{where} has no prompts for evaluate.policies to answer")
    # compare's options, so that its core answers, scores and summarises exactly as it does
    options = CompareConfig(policies=policies, baseline=e.baseline or next(iter(policies)), prompts=len(prompts),
                            samples_per_prompt=e.samples_per_prompt, modes=["greedy" if e.greedy else "sampled"],
                            temperature=e.temperature, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                            bootstrap_resamples=e.bootstrap_resamples, confidence=e.confidence)
    if rm is None:
        log.info("evaluate: no reward model, so the answers are judged by the gold scorer alone")
    results = judge(cfg, options, policies, prompts, out, tokenizer=tokenizer, rm=rm, gold_scorer=gold_scorer,
                    section="evaluate", sources=sources)
    if results is not None:
        results["prompts_from"] = f"prompts of {where}"
        if is_main_process():
            print(_policy_table(results), flush=True)
    return results


def score_comparisons(model, tokenizer, comparisons: Sequence[Comparison], gold_scorer: Optional[Callable] = None,
                      batch_size: int = 256):
    """Per comparison, aligned with its responses: the RM's scores (normalised), the responses'
    lengths in tokens, and the gold scores when there is a gold scorer (else None)."""
    from tqdm.auto import tqdm

    scores: list[tuple[float, ...]] = []
    lengths: list[tuple[int, ...]] = []
    for start in tqdm(range(0, len(comparisons), batch_size), desc="scoring comparisons", unit="batch",
                      disable=not is_main_process() or len(comparisons) <= batch_size):
        batch = comparisons[start:start + batch_size]
        responses = [t for c in batch for t in c.responses]
        flat = score(model, tokenizer, [c.prompt for c in batch for _ in c.responses], responses).tolist()
        tokens = [len(ids) for ids in encode_responses(tokenizer, responses)]
        at = 0
        for c in batch:
            scores.append(tuple(flat[at:at + c.k]))
            lengths.append(tuple(tokens[at:at + c.k]))
            at += c.k
    gold = None
    if gold_scorer is not None:
        gold = [tuple(float(gold_scorer(c.prompt, t)) for t in c.responses) for c in comparisons]
    return scores, lengths, gold


def pairwise_metrics(comparisons: Sequence[Comparison], scores: Sequence[Sequence[float]],
                     lengths: Sequence[Sequence[int]], gold: Optional[Sequence[Sequence[float]]] = None, *,
                     resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """How a reward model orders the better-worse pairs of `comparisons` (every pair of different
    rank), beside what length alone would do on the same pairs. `scores`, `lengths` and `gold`
    hold one sequence per comparison, aligned with its responses. A pair scores 1 when the RM
    rates the better response higher, 0.5 when the two are within TIE, else 0.

    accuracy       mean over pairs, with accuracy_low/high: a bootstrap interval over comparisons
    ties           pairs the RM scores within TIE
    longer_wins    share of pairs whose better response has more tokens; shorter_wins fewer,
                   same_length as many (the three sum to 1): "always the longer one" would score
                   longer_wins + same_length / 2
    margin_*       mean and percentiles of score(better) - score(worse)
    *_k<K>, *_source_<name>  accuracy, pairs and longer_wins of the pairs of K-wise comparisons
                   and of one data source
    gold_*         with gold scores: gold_accuracy, how often the RM orders a pair as the gold
                   scorer does (pairs gold ties left out), and gold_label_accuracy, how often the
                   labels do (1 - label noise: the ceiling the labels allow)
    score_best/worst_*  mean and std of the scores of the best- and worst-ranked responses
    """
    at, hits, margins, sign, k_of, source_of = [], [], [], [], [], []
    for n, (c, s, t) in enumerate(zip(comparisons, scores, lengths)):
        for i, j in c.pairs():
            at.append(n)
            margins.append(s[i] - s[j])
            hits.append(_point(s[i] - s[j]))
            sign.append(np.sign(t[i] - t[j]))
            k_of.append(f"k{c.k}")
            source_of.append(f"source_{c.source or 'unknown'}")
    if not hits:
        raise ValueError("no pairs: every comparison is a tie")
    at, hits, margins, sign = np.array(at), np.array(hits), np.array(margins), np.array(sign)
    ci = dict(resamples=resamples, confidence=confidence, seed=seed)
    low, high = _interval(at, hits, len(comparisons), ci)
    m: dict = {"comparisons": int(len(set(at.tolist()))), "pairs": len(hits), "accuracy": float(hits.mean()),
               "accuracy_low": low, "accuracy_high": high, "ties": int((np.abs(margins) < TIE).sum()),
               "longer_wins": float((sign > 0).mean()), "shorter_wins": float((sign < 0).mean()),
               "same_length": float((sign == 0).mean()), "margin_mean": float(margins.mean())}
    m.update({f"margin_p{p}": float(v) for p, v in zip(MARGIN_PERCENTILES, np.percentile(margins, MARGIN_PERCENTILES))})
    if gold is not None:
        m.update(_gold_metrics(comparisons, scores, gold, ci))
    for labels in (k_of, source_of):
        labels = np.array(labels)
        for key in sorted(set(labels.tolist())):
            mask = labels == key
            m[f"accuracy_{key}"] = float(hits[mask].mean())
            m[f"pairs_{key}"] = int(mask.sum())
            m[f"longer_wins_{key}"] = float((sign[mask] > 0).mean())
    for name, index in (("best", 0), ("worst", -1)):  # responses are best-first
        values = [s[index] for s in scores]
        m[f"score_{name}_mean"], m[f"score_{name}_std"] = float(np.mean(values)), float(np.std(values))
    return m


def _point(diff: float) -> float:
    return 0.5 if abs(diff) < TIE else float(diff > 0)


def _interval(at: np.ndarray, points: np.ndarray, comparisons: int, ci: dict) -> tuple[float, float]:
    """Bootstrap interval of the mean over pairs, resampling comparisons (a K-wise comparison's
    pairs share a prompt and responses, so they are not independent)."""
    count = np.bincount(at, minlength=comparisons)
    total = np.bincount(at, weights=points, minlength=comparisons)
    has = count > 0
    return bootstrap_ci(total[has] / count[has], weights=count[has], **ci)


def _gold_metrics(comparisons, scores, gold, ci) -> dict:
    at, rm_points, label_points = [], [], []
    for n, (c, s, g) in enumerate(zip(comparisons, scores, gold)):
        for i in range(c.k):
            for j in range(c.k):
                if g[i] > g[j]:  # gold's order; its ties say nothing
                    at.append(n)
                    rm_points.append(_point(s[i] - s[j]))
                    label_points.append(1.0 if c.ranks[i] < c.ranks[j] else 0.5 if c.ranks[i] == c.ranks[j] else 0.0)
    if not at:
        return {"gold_pairs": 0, "gold_accuracy": None, "gold_label_accuracy": None}
    at, rm_points = np.array(at), np.array(rm_points)
    low, high = _interval(at, rm_points, len(comparisons), ci)
    return {"gold_pairs": len(at), "gold_accuracy": float(rm_points.mean()), "gold_accuracy_low": low,
            "gold_accuracy_high": high, "gold_label_accuracy": float(np.mean(label_points))}


def comparison_rows(comparisons, scores, lengths, gold) -> list[dict]:
    """comparisons.jsonl: each comparison with its scores, token lengths and pairs got right."""
    rows = []
    for n, (c, s, t) in enumerate(zip(comparisons, scores, lengths)):
        points = [_point(s[i] - s[j]) for i, j in c.pairs()]
        rows.append({"index": n, "source": c.source, "k": c.k, "prompt": c.prompt, "responses": list(c.responses),
                     "ranks": list(c.ranks), "scores": list(s), "tokens": list(t),
                     "gold_scores": list(gold[n]) if gold is not None else None,
                     "pairs": len(points), "accuracy": float(np.mean(points))})
    return rows


def pairwise_table(m: dict, title: str) -> str:
    """The console's and report.md's summary of pairwise_metrics."""
    lines = [f"{title}:",
             f"  RM accuracy {m['accuracy']:.3f} [{m['accuracy_low']:.3f}, {m['accuracy_high']:.3f}] on {m['pairs']:,} "
             f"pairs of {m['comparisons']:,} comparisons; score ties {m['ties']:,}",
             f"  length baseline on the same pairs: the longer reply wins {m['longer_wins']:.3f}, the shorter "
             f"{m['shorter_wins']:.3f}, same length {m['same_length']:.3f}",
             "  margin score(better) - score(worse): mean {:.3f}; {}".format(
                 m["margin_mean"], ", ".join(f"p{p} {m[f'margin_p{p}']:.3f}" for p in MARGIN_PERCENTILES))]
    if m.get("gold_accuracy") is not None:
        lines.append(f"  gold scorer: the RM orders {m['gold_accuracy']:.3f} [{m['gold_accuracy_low']:.3f}, "
                     f"{m['gold_accuracy_high']:.3f}] of {m['gold_pairs']:,} pairs as gold does; the labels "
                     f"{m['gold_label_accuracy']:.3f} (the ceiling they allow)")
    groups = [key[len("pairs_"):] for key in m if key.startswith("pairs_")]
    width = max(len(_group_name(g)) for g in groups)
    lines += ["", f"  {'pairs of':<{width}}  {'pairs':>9}  {'accuracy':>8}  {'longer wins':>11}"]
    for g in groups:
        lines.append(f"  {_group_name(g):<{width}}  {m[f'pairs_{g}']:>9,}  {m[f'accuracy_{g}']:>8.3f}  "
                     f"{m[f'longer_wins_{g}']:>11.3f}")
    return "\n".join(lines)


def _group_name(key: str) -> str:
    return f"K = {key[1:]}" if key.startswith("k") else f"source {key[len('source_'):]}"


def _policy_table(results: dict) -> str:
    lines = [f"Policies on {results['prompts']} prompts, win rates against {results['baseline']}:"]
    for mode, table in results["modes"].items():
        for name, row in table.items():
            cells = [f"{label} {_fmt(row[key])}" for key, label in (
                ("rm_score", "RM score"), ("gold_score", "gold score"), ("win_rate_rm", "win rate by RM"),
                ("win_rate_gold", "win rate by gold"), ("win_rate_length", "longer than baseline"))
                if row.get(key) is not None]
            lines.append(f"  {name} ({mode}): " + "; ".join(cells))
    return "\n".join(lines)


def _fmt(x: dict) -> str:
    return f"{x.get('mean', x.get('value')):.3f} [{x['low']:.3f}, {x['high']:.3f}]"


def _write_report(results: dict, out) -> None:
    lines = [f"# Evaluate: run `{results['run']}`", ""]
    m = results["rm_on_comparisons"]
    if m is not None:
        lines += ["## Reward model on comparisons", "", "```", pairwise_table(m, f"`{results['reward_from']}`"), "```",
                  "", "Ties count as half a pair right; the interval is a bootstrap over comparisons. Per "
                  "comparison: comparisons.jsonl.", ""]
    if results["policies_on_prompts"] is not None:
        lines += ["## Policies on prompts", "", *report_lines(results["policies_on_prompts"], out)]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")

