"""Compare's statistics, pure functions of the per-answer records (tested against hand-computed
cases): win rates, bootstrap intervals, distinct-n, best-of-n's analytic KL, and the summary that
results.json holds."""

from __future__ import annotations

import math

import numpy as np

from rlhf.config import CompareConfig, RLHFConfig


def per_prompt_wins(scores: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """[prompts, samples] scores of a policy and the baseline, sample j against sample j ->
    [prompts] share won, a tie counting one half."""
    return ((scores > baseline) + 0.5 * (scores == baseline)).mean(1)


def bootstrap_ci(values: np.ndarray, resamples: int, confidence: float, seed: int,
                 weights: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-prompt `values`, resampling prompts; with
    `weights`, of the weighted mean (per-comparison accuracies weighted by their pairs give the
    interval of the accuracy over pairs)."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=float)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
    # resamples drawn in blocks of about 4M indices: tens of thousands of comparisons stay in
    # memory (the draws are the same as in one block)
    block = max(1, 4_000_000 // max(1, len(values)))
    means = []
    for start in range(0, resamples, block):
        idx = rng.integers(0, len(values), (min(block, resamples - start), len(values)))
        means.append((values[idx] * weights[idx]).sum(1) / weights[idx].sum(1))
    means = np.concatenate(means)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the answers (whitespace words): low = repetitive."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bon_kl(n: int) -> float:
    """KL of best-of-n to its base policy: the analytic value Stiennon et al. (2020) and Gao et al.
    (2022) use (exact with no ties among the n samples, an upper bound otherwise)."""
    return math.log(n) - (n - 1) / n


def summarise(records: list[dict], cfg: RLHFConfig, policies: dict[str, str], prompts: list,
              options: CompareConfig | None = None, sources: list[str] | None = None) -> dict:
    """Everything report.md and the plots show, from the per-answer records alone. `options`:
    the modes, baseline, samples and intervals (default cfg.compare; evaluate passes its own).
    `sources`: each prompt's data source; with two or more, the scores per source too."""
    c = options or cfg.compare
    ci = dict(resamples=c.bootstrap_resamples, confidence=c.confidence, seed=cfg.seed)
    modes: dict[str, dict] = {}
    for mode in c.modes:
        rows = {name: [r for r in records if r["policy"] == name and r["mode"] == mode] for name in policies}
        rows = {name: rs for name, rs in rows.items() if rs}
        if not rows:
            continue
        table = {}
        base = rows.get(c.baseline)
        for name, rs in rows.items():
            entry: dict = {"answers": len(rs)}
            for metric in ("rm_score", "gold_score", "kl"):
                if rs[0][metric] is None:
                    entry[metric] = None
                    continue
                per_prompt = _matrix(rs, metric, len(prompts)).mean(1)
                low, high = bootstrap_ci(per_prompt, **ci)
                entry[metric] = {"mean": float(per_prompt.mean()), "low": low, "high": high}
            entry["instructions"] = instruction_accuracy(rs, len(prompts), ci) if "instructions" in rs[0] else None
            entry["kl_method"] = rs[0]["kl_method"]
            entry["tokens"] = float(np.mean([r["tokens"] for r in rs]))
            entry["eos_rate"] = float(np.mean([r["ended"] for r in rs]))
            entry["distinct_1"] = distinct_n([r["response"] for r in rs], 1)
            entry["distinct_2"] = distinct_n([r["response"] for r in rs], 2)
            # by length: how often the answer is longer than the baseline's, the win rate a judge
            # that prefers longer answers would give (a win rate by RM near it may be length)
            for metric, key in (("rm_score", "win_rate_rm"), ("gold_score", "win_rate_gold"),
                                ("tokens", "win_rate_length")):
                entry[key] = None
                if base is None or name == c.baseline or rs[0][metric] is None:
                    continue
                mine, theirs = _matrix(rs, metric, len(prompts)), _matrix(base, metric, len(prompts))
                samples = min(mine.shape[1], theirs.shape[1])
                wins = per_prompt_wins(mine[:, :samples], theirs[:, :samples])
                low, high = bootstrap_ci(wins, **ci)
                entry[key] = {"value": float(wins.mean()), "low": low, "high": high}
            # the gain itself, paired per prompt (answer j against answer j): the interval a claim
            # that one policy beats another is read on
            for metric, key in (("rm_score", "rm_minus_baseline"), ("gold_score", "gold_minus_baseline")):
                entry[key] = None
                if base is None or name == c.baseline or rs[0][metric] is None:
                    continue
                entry[key] = paired_difference(_matrix(rs, metric, len(prompts)), _matrix(base, metric, len(prompts)), ci)
            if sources and len(set(sources)) > 1:
                entry["by_source"] = by_source(rs, base if name != c.baseline else None, sources, ci)
            table[name] = entry
        modes[mode] = table
    examples = []
    for i in range(min(c.examples, len(prompts))):
        found = {r["policy"]: r["response"] for r in records
                 if r["prompt_index"] == i and r["sample"] == 0 and r["mode"] == c.modes[0]}
        answers = {name: found[name] for name in policies if name in found}
        examples.append({"prompt": _prompt_text(prompts[i]), "mode": c.modes[0], "answers": answers})
    return {"run": cfg.run, "policies": policies, "baseline": c.baseline, "prompts": len(prompts),
            "samples_per_prompt": c.samples_per_prompt, "temperature": c.temperature, "seed": cfg.seed,
            "confidence": c.confidence, "bootstrap_resamples": c.bootstrap_resamples, "modes": modes,
            "examples": examples}


def paired_difference(mine: np.ndarray, theirs: np.ndarray, ci: dict) -> dict:
    """[prompts, samples] of a policy and the baseline, answer j against answer j -> the mean
    per-prompt difference with its bootstrap interval over prompts."""
    samples = min(mine.shape[1], theirs.shape[1])
    diff = (mine[:, :samples] - theirs[:, :samples]).mean(1)
    low, high = bootstrap_ci(diff, **ci)
    return {"mean": float(diff.mean()), "low": low, "high": high}


def by_source(rows: list[dict], base: list[dict] | None, sources: list[str], ci: dict) -> dict[str, dict]:
    """One policy's RM and gold scores over the prompts of each source (a test set of kinds seen
    in training beside one of held-out kinds), and minus the baseline's, paired per prompt."""
    out: dict[str, dict] = {}
    of = np.asarray(sources)
    for source in dict.fromkeys(sources):  # in the order the prompts came
        mask = of == source
        entry: dict = {"prompts": int(mask.sum())}
        for metric in ("rm_score", "gold_score"):
            entry[metric] = entry[f"{metric}_minus_baseline"] = None
            if rows[0][metric] is None:
                continue
            mine = _matrix(rows, metric, len(sources))[mask]
            per_prompt = mine.mean(1)
            low, high = bootstrap_ci(per_prompt, **ci)
            entry[metric] = {"mean": float(per_prompt.mean()), "low": low, "high": high}
            if base is not None:
                entry[f"{metric}_minus_baseline"] = paired_difference(mine, _matrix(base, metric, len(sources))[mask], ci)
        out[source] = entry
    return out


def instruction_accuracy(rows: list[dict], prompts: int, ci: dict) -> dict:
    """IFEval's accuracies of one policy and mode, from its answers' verdicts (records with
    "instructions": ids and, per id, strict and loose pass): prompt-level (the share of answers
    that follow every instruction of their prompt) and instruction-level (the share of
    instructions followed, pooled over answers), strict and loose, each with a bootstrap interval
    over prompts; and the instruction-level accuracy by kind (no interval: a kind may be rare)."""
    out: dict = {}
    kinds: dict[str, dict] = {}
    for reading in ("strict", "loose"):
        answers, every, followed, given = (np.zeros(prompts) for _ in range(4))
        for r in rows:
            passed, i = r["instructions"][reading], r["prompt_index"]
            answers[i] += 1
            every[i] += all(passed)
            followed[i] += sum(passed)
            given[i] += len(passed)
            for kind, ok in zip(r["instructions"]["ids"], passed):
                tally = kinds.setdefault(kind, {"instructions": 0, "strict": 0, "loose": 0})
                tally[reading] += ok
                tally["instructions"] += reading == "strict"
        if (answers == 0).any():
            raise ValueError(f"{rows[0]['policy']}/{rows[0]['mode']}: no answers for some prompts")
        low, high = bootstrap_ci(every / answers, **ci)
        out[f"prompt_{reading}"] = {"mean": float((every / answers).mean()), "low": low, "high": high}
        # each prompt weighted by its instructions: the resampled means are pooled shares
        low, high = bootstrap_ci(followed / given, **ci, weights=given)
        out[f"instruction_{reading}"] = {"mean": float(followed.sum() / given.sum()), "low": low, "high": high}
    out["by_kind"] = {kind: {"instructions": t["instructions"], "strict": t["strict"] / t["instructions"],
                             "loose": t["loose"] / t["instructions"]} for kind, t in sorted(kinds.items())}
    return out


def _matrix(rows: list[dict], metric: str, prompts: int) -> np.ndarray:
    """[prompts, samples] of one policy and mode."""
    samples = 1 + max(r["sample"] for r in rows)
    out = np.full((prompts, samples), np.nan)
    for r in rows:
        out[r["prompt_index"], r["sample"]] = r[metric]
    if np.isnan(out).any():
        raise ValueError(f"{rows[0]['policy']}/{rows[0]['mode']}: missing answers for some prompts or samples")
    return out


def _prompt_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def seedless(name: str) -> str:
    """A policy's name without the seed of its sweep point: ppo@algo=grpo,seed=1 -> ppo@algo=grpo
    (ppo@seed=2 -> ppo). Policies with the same seedless name differ only by seed."""
    stage, _, variant = name.partition("@")
    rest = [part for part in variant.split(",") if part and not part.startswith("seed=")]
    return f"{stage}@{','.join(rest)}" if rest else stage


def by_method(results: dict) -> dict[str, dict]:
    """Policies that differ only by seed (ppo@algo=grpo,seed=0, ...=1, ...) pooled, per mode:
    each figure's mean over them and its range [min, max], for groups of two or more stage-3
    policies (those with a method label). The seeds' spread, not a sampling interval."""
    groups: dict[str, list[str]] = {}
    for name in (results.get("methods") or {}):
        groups.setdefault(seedless(name), []).append(name)
    out: dict[str, dict] = {}
    for mode, table in results["modes"].items():
        rows = {}
        for group, names in groups.items():
            names = [n for n in names if n in table]
            if len(names) < 2:
                continue
            row: dict = {"policies": names, "label": results["methods"][names[0]]}
            for metric in ("rm_score", "gold_score", "win_rate_rm", "win_rate_gold", "kl"):
                values = [table[n][metric].get("mean", table[n][metric].get("value")) for n in names
                          if table[n][metric] is not None]
                row[metric] = ({"mean": float(np.mean(values)), "low": float(min(values)), "high": float(max(values))}
                               if values else None)
            row["eval_gold_peak"] = _peak([results.get("eval_curves", {}).get(n) for n in names])
            costs = [results.get("costs", {}).get(n, {}) for n in names]
            for key in ("duration_s", "peak_rss_mb"):
                values = [c[key] for c in costs if key in c]
                row[key] = float(np.median(values)) if values else None
            rows[group] = row
        if rows:
            out[mode] = rows
    return out


def _peak(curves: list) -> dict | None:
    """Where the policies' mean gold score (sampled, eval prompts) peaked during training: the
    update, the value, and the value at the last evaluation; None without curves for all."""
    if not curves or any(c is None for c in curves):
        return None
    by_update = [{e["update"]: e["gold_sampled_mean"] for e in c["evals"]} for c in curves]
    updates = sorted(set.intersection(*(set(u) for u in by_update)))
    if not updates:
        return None
    mean = {u: float(np.mean([b[u] for b in by_update])) for u in updates}
    best = max(updates, key=lambda u: (mean[u], -u))
    return {"update": best, "value": mean[best], "last_update": updates[-1], "last": mean[updates[-1]]}
