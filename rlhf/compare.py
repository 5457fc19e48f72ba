"""`rlhf stage=compare`: the policies each stage produced, side by side on held-out prompts.

    policies  named checkpoints or hub ids (default: this run's sft and ppo), and bon:<n>, the
              best of n samples of a base policy picked by the reward model: the classic
              baseline PPO must beat
    answers   the eval split's first `compare.prompts` prompts; in sampled mode
              `samples_per_prompt` answers each with seeds seed, seed+1, ... (the same prompts and
              seeds for every policy), in greedy mode one
    measures  RM score (normalised), gold score (toy task), KL to the reference (sampled
              estimate of sum log pi/pi_ref per answer; for bon:<n> the analytic
              log n - (n-1)/n), answer length, EOS rate, distinct-1/2; win rates against
              `compare.baseline` by RM and by gold, ties as halves, with bootstrap confidence
              intervals over prompts
    outputs   runs/<run>/compare/: report.md, results.json, samples.jsonl, *.png

report.md and the plots are drawn from results.json alone, so `compare.from_results=<file>`
redraws them without sampling. Under torchrun the prompts are shared out across ranks and rank
0 gathers the answers and writes.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from rlhf import distributed
from rlhf.artifacts import StageRun, write_atomic, write_json
from rlhf.distributed import is_main_process
from rlhf.config import ConfigError, RLHFConfig
from rlhf.data import load_data
from rlhf.generation import Sample, generate, response_logprob_sums, score
from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer

log = logging.getLogger(__name__)

BON_SEED_OFFSET = 1_000_003  # bon:<n>'s candidates use seeds apart from the sampled mode's


# ---- statistics (pure; tested against hand-computed cases) ----

def per_prompt_wins(scores: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """[prompts, samples] scores of a policy and the baseline, sample j against sample j ->
    [prompts] share won, a tie counting one half."""
    return ((scores > baseline) + 0.5 * (scores == baseline)).mean(1)


def bootstrap_ci(values: np.ndarray, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-prompt `values`, resampling prompts."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
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


# ---- the stage ----

def run(cfg: RLHFConfig, run: StageRun) -> None:
    c = cfg.compare
    out = cfg.stage_dir
    if c.from_results:
        path = Path(c.from_results)
        if not path.is_file():
            raise ConfigError(f"compare.from_results={path}: no such file (a results.json of an earlier compare)")
        results = json.loads(path.read_text())
        write_report(results, out)
        run.metrics["from_results"] = str(path)
        return

    policies = resolve_policies(cfg)
    reward_from = c.reward_from or str(cfg.run_dir / "rm" / "final")
    reference_from = c.reference_from or str(cfg.run_dir / "sft" / "final")
    bon_from = c.bon_from or reference_from
    for key, path in (("reward_from", reward_from), ("reference_from", reference_from)):
        if getattr(c, key) is None and not Path(path).exists():
            raise ConfigError(f"compare.{key} is null, so compare reads {path}, which does not exist: run the "
                              f"stage that writes it, or set compare.{key}=<folder or hub id>")
    tokenizer = load_tokenizer(cfg.model)
    bundle = load_data(cfg.data, tokenizer)
    prompts = [x.prompt for x in bundle.require("eval", "prompts")][: c.prompts]
    max_new_tokens = c.max_new_tokens or cfg.data.max_response_tokens
    mine = list(range(distributed.rank(), len(prompts), distributed.world_size()))  # this rank's share of the prompts
    run.manifest["inputs"] = {"policies": policies, "reward_from": reward_from, "reference_from": reference_from,
                              "bon_from": bon_from, "prompts": len(prompts)}

    rm = load_reward_model(cfg.model, tokenizer, reward_from).eval()
    reference = load_causal_lm(cfg.model, tokenizer, reference_from).eval()
    records: list[dict] = []
    from tqdm.auto import tqdm

    # one step per batch of answers: samples_per_prompt (+1 greedy) per policy, n per bon:<n> sample
    steps = sum(c.samples_per_prompt * int(spec[4:]) * ("sampled" in c.modes) if spec.startswith("bon:") else
                c.samples_per_prompt * ("sampled" in c.modes) + ("greedy" in c.modes) for spec in policies.values())
    progress = tqdm(total=steps, desc="compare", unit="pass", disable=not is_main_process())
    for name, spec in policies.items():
        log.info("compare: answering with %s (%s)", name, spec)
        progress.set_postfix(policy=name)
        if spec.startswith("bon:"):
            if "sampled" not in c.modes:
                continue
            base = reference if bon_from == reference_from else load_causal_lm(cfg.model, tokenizer, bon_from).eval()
            records += _best_of_n(name, int(spec[4:]), base, bon_from == reference_from, rm, tokenizer,
                                  bundle.gold_scorer, prompts, mine, cfg, max_new_tokens)
            progress.update(c.samples_per_prompt * int(spec[4:]))
            continue
        policy = _load_policy(cfg, tokenizer, name, spec)
        for mode in c.modes:
            seeds = [cfg.seed + j for j in range(c.samples_per_prompt)] if mode == "sampled" else [cfg.seed]
            for j, seed in enumerate(seeds):
                answers = generate(policy, tokenizer, [prompts[i] for i in mine], max_new_tokens=max_new_tokens,
                                   greedy=mode == "greedy", temperature=c.temperature, batch_size=c.batch_size,
                                   seed=seed)
                kl = None
                if mode == "sampled":  # the policy's log-probs come from sampling; the reference's need a pass
                    kl = (torch.tensor([a.logprob for a in answers])
                          - response_logprob_sums(reference, tokenizer, answers, c.temperature, c.batch_size))
                records += _records(name, mode, j, mine, answers, rm, tokenizer, bundle.gold_scorer, kl, "sampled")
                progress.update(1)
        del policy
    progress.close()

    records = distributed.gather_objects(records)
    if not is_main_process():
        return
    records.sort(key=lambda r: (r["policy"], r["mode"], r["prompt_index"], r["sample"]))
    write_atomic(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    results = summarise(records, cfg, policies, prompts)
    results["training_curves"] = training_curves(Path(c.ppo_logs) if c.ppo_logs else cfg.run_dir / "ppo" / "logs")
    write_json(out / "results.json", results)
    write_report(results, out)
    run.metrics.update({f"{mode}/{name}/{k}": v.get("mean", v.get("value")) if isinstance(v, dict) else v
                        for mode, table in results["modes"].items() for name, row in table.items()
                        for k, v in row.items() if k in ("rm_score", "gold_score", "win_rate_rm", "win_rate_gold")
                        and v is not None})
    log.info("compare: %s", out / "report.md")


def resolve_policies(cfg: RLHFConfig) -> dict[str, str]:
    c = cfg.compare
    if c.policies:
        return dict(c.policies)
    policies = {}
    if cfg.model.name_or_path:
        policies["base"] = cfg.model.name_or_path
    for stage in ("sft", "ppo"):
        if (cfg.run_dir / stage / "final").exists():
            policies[stage] = str(cfg.run_dir / stage / "final")
    if "sft" not in policies:
        raise ConfigError(f"compare.policies is empty, so compare uses this run's stages, but {cfg.run_dir}/sft/final "
                          f"does not exist: run `rlhf stage=sft run={cfg.run}` first, or set compare.policies")
    policies["bon:4"] = "bon:4"
    if c.baseline not in policies:
        raise ConfigError(f"compare.baseline={c.baseline!r} is not among the default policies {list(policies)}")
    return policies


def _load_policy(cfg: RLHFConfig, tokenizer, name: str, spec: str):
    try:
        return load_causal_lm(cfg.model, tokenizer, spec).eval()
    except OSError as e:  # what transformers raises for a folder or hub id it cannot find
        raise ConfigError(f"compare.policies.{name}={spec!r}: cannot load it ({e}); give a Hugging Face folder "
                          "(e.g. runs/<run>/ppo/final), a hub id, or bon:<n>") from e


def _records(name, mode, sample, indices, answers: list[Sample], rm, tokenizer, gold_scorer, kl, kl_method,
             rm_scores=None):
    if rm_scores is None:
        rm_scores = score(rm, tokenizer, [a.prompt for a in answers], [a.text for a in answers])
    rows = []
    for k, (i, a) in enumerate(zip(indices, answers)):
        rows.append({"policy": name, "mode": mode, "prompt_index": i, "sample": sample, "prompt": a.prompt,
                     "response": a.text, "rm_score": float(rm_scores[k]),
                     "gold_score": float(gold_scorer(a.prompt, a.text)) if gold_scorer else None,
                     "kl": float(kl[k]) if kl is not None else None, "kl_method": kl_method if kl is not None else None,
                     "tokens": len(a.token_ids), "ended": a.ended})
    return rows


def _best_of_n(name, n, base, base_is_reference, rm, tokenizer, gold_scorer, prompts, mine, cfg,
               max_new_tokens) -> list[dict]:
    """Sampled mode only: best-of-n of greedy answers would be the greedy answer."""
    c = cfg.compare
    rows = []
    for j in range(c.samples_per_prompt):
        candidates = [generate(base, tokenizer, [prompts[i] for i in mine], max_new_tokens=max_new_tokens,
                               temperature=c.temperature, batch_size=c.batch_size,
                               seed=cfg.seed + BON_SEED_OFFSET + j * n + k) for k in range(n)]
        scores = torch.stack([score(rm, tokenizer, [a.prompt for a in cand], [a.text for a in cand])
                              for cand in candidates])  # [n, prompts]
        best_score, pick = scores.max(0)
        best = [candidates[k][i] for i, k in enumerate(pick.tolist())]
        kl = torch.full((len(best),), bon_kl(n)) if base_is_reference else None
        chosen = _records(name, "sampled", j, mine, best, rm, tokenizer, gold_scorer, kl, "analytic", best_score)
        for i, row in enumerate(chosen):  # the n candidates stay in samples.jsonl, beside the pick
            row["candidates"] = [{"response": cand[i].text, "rm_score": float(scores[k, i])}
                                 for k, cand in enumerate(candidates)]
        rows += chosen
    return rows


# ---- results ----

def summarise(records: list[dict], cfg: RLHFConfig, policies: dict[str, str], prompts: list) -> dict:
    """Everything report.md and the plots show, from the per-answer records alone."""
    c = cfg.compare
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
            entry["kl_method"] = rs[0]["kl_method"]
            entry["tokens"] = float(np.mean([r["tokens"] for r in rs]))
            entry["eos_rate"] = float(np.mean([r["ended"] for r in rs]))
            entry["distinct_1"] = distinct_n([r["response"] for r in rs], 1)
            entry["distinct_2"] = distinct_n([r["response"] for r in rs], 2)
            for metric, key in (("rm_score", "win_rate_rm"), ("gold_score", "win_rate_gold")):
                entry[key] = None
                if base is None or name == c.baseline or rs[0][metric] is None:
                    continue
                mine, theirs = _matrix(rs, metric, len(prompts)), _matrix(base, metric, len(prompts))
                samples = min(mine.shape[1], theirs.shape[1])
                wins = per_prompt_wins(mine[:, :samples], theirs[:, :samples])
                low, high = bootstrap_ci(wins, **ci)
                entry[key] = {"value": float(wins.mean()), "low": low, "high": high}
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


def training_curves(logs: Path) -> dict | None:
    """PPO's per-update proxy (RM) score, gold score and KL from its TensorBoard logs, if any."""
    if not logs.is_dir():
        return None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # "No path found after ..." is routine
    events = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    curves = {tag.split("/", 1)[1]: [[e.step, e.value] for e in events.Scalars(tag)]
              for tag in ("ppo/score", "ppo/gold_score", "ppo/kl") if tag in tags}
    return {"logs": str(logs), **curves} if curves else None


# ---- report and plots (from results.json alone) ----

def write_report(results: dict, out: Path) -> None:
    lines = [f"# Compare: run `{results['run']}`", "",
             f"{results['prompts']} held-out prompts; sampled mode: {results['samples_per_prompt']} answers per "
             f"prompt at temperature {results['temperature']} (seeds from {results['seed']}, the same for every "
             f"policy). Win rates are against `{results['baseline']}`, answer j against answer j, ties as halves; "
             f"[low, high] is a {results['confidence']:.0%} bootstrap interval over prompts "
             f"({results['bootstrap_resamples']} resamples).", ""]
    for mode, table in results["modes"].items():
        lines += [f"## {mode}", "",
                  "| policy | RM score | gold score | win rate by RM | win rate by gold | KL (nats) | tokens | EOS | "
                  "distinct-1/2 |", "|---|---|---|---|---|---|---|---|---|"]
        for name, e in table.items():
            kl = _fmt(e["kl"]) + (" (analytic)" if e.get("kl_method") == "analytic" and e["kl"] else "")
            lines.append(f"| {name} | {_fmt(e['rm_score'])} | {_fmt(e['gold_score'])} | {_fmt(e['win_rate_rm'])} | "
                         f"{_fmt(e['win_rate_gold'])} | {kl} | {e['tokens']:.1f} | {e['eos_rate']:.0%} | "
                         f"{e['distinct_1']:.2f} / {e['distinct_2']:.2f} |")
        lines.append("")
    if results["examples"]:
        lines += ["## Examples", ""]
        for ex in results["examples"]:
            lines += [f"**{ex['prompt']}** ({ex['mode']}, answer 0)", ""]
            lines += [f"- `{name}`: {answer}" for name, answer in ex["answers"].items()]
            lines.append("")
    plots = write_plots(results, out)
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")


def _fmt(x) -> str:
    if x is None:
        return "–"
    value = x.get("mean", x.get("value"))
    return f"{value:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


def write_plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    mode = "sampled" if "sampled" in results["modes"] else next(iter(results["modes"]), None)
    if mode is not None:
        table = results["modes"][mode]
        metrics = [m for m in ("rm_score", "gold_score", "win_rate_rm", "win_rate_gold")
                   if any(e[m] is not None for e in table.values())]
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            names = [n for n, e in table.items() if e[metric] is not None]
            values = [table[n][metric].get("mean", table[n][metric].get("value")) for n in names]
            errors = [[v - table[n][metric]["low"] for n, v in zip(names, values)],
                      [table[n][metric]["high"] - v for n, v in zip(names, values)]]
            ax.bar(names, values, yerr=errors, capsize=4, color="tab:blue")
            if metric.startswith("win_rate"):
                ax.axhline(0.5, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{metric} ({mode})", fontsize=9)
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / "scores.png"))

        points = {n: e for n, e in table.items() if e["kl"] is not None}
        if points:
            fig, ax = plt.subplots(figsize=(4.5, 3.5))
            for name, e in points.items():
                ax.errorbar(e["kl"]["mean"], e["rm_score"]["mean"], capsize=3, fmt="o",
                            yerr=[[e["rm_score"]["mean"] - e["rm_score"]["low"]], [e["rm_score"]["high"] - e["rm_score"]["mean"]]])
                ax.annotate(name, (e["kl"]["mean"], e["rm_score"]["mean"]), fontsize=8, xytext=(4, 4),
                            textcoords="offset points")
            ax.set_xlabel("KL to reference (nats)")
            ax.set_ylabel("RM score (normalised)")
            ax.set_title(f"RM score vs KL ({mode})", fontsize=9)
            fig.tight_layout()
            written.append(_save(fig, out / "rm_vs_kl.png"))

    curves = results.get("training_curves")
    if curves and "score" in curves:
        # per-update figures are one rollout batch each: noisy, so each line is a moving mean
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        series = {k: dict(curves[k]) for k in ("score", "gold_score", "kl") if k in curves}
        labels = {"score": "RM score (proxy)", "gold_score": "gold score", "kl": "KL (nats)"}
        for key, points in series.items():
            steps = sorted(points)
            left.plot(steps, _moving_mean([points[s] for s in steps]), label=labels[key])
        if "kl" in series:
            steps = sorted(series["kl"])
            sqrt_kl = [math.sqrt(max(v, 0.0)) for v in _moving_mean([series["kl"][s] for s in steps])]
            for key in ("score", "gold_score"):
                if key in series and all(s in series[key] for s in steps):
                    right.plot(sqrt_kl, _moving_mean([series[key][s] for s in steps]), label=labels[key])
            right.set_xlabel("sqrt(KL) to reference")
            right.set_title("proxy and gold vs sqrt(KL) (Gao et al. 2022)", fontsize=9)
            right.legend(fontsize=8)
        left.set_xlabel("PPO update")
        left.set_title("PPO training (moving mean of 5 updates)", fontsize=9)
        left.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / "training.png"))
    return written


def _moving_mean(values: list[float], window: int = 5) -> list[float]:
    return [float(np.mean(values[max(0, i - window + 1): i + 1])) for i in range(len(values))]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
