"""Stage 3's methods side by side over seeds: for each seed, one run of an experiment (its own
SFT policy and reward model), PPO through the pipeline, the other stage-3 algorithms as one sweep
(`rlhf -m stage=ppo algo=...`, folders ppo@algo=...), DPO and best-of-n distillation, then
compare (every policy beside sft and bon:4, greedy and sampled). Prints one JSON object: per
policy and seed compare's figures (gold greedy and sampled, RM score, KL, tokens, the stage's wall
time and peak RSS) and the paired difference of its sampled gold to best-of-4's with a bootstrap
interval; each seed's RM accuracy beside the length baseline; and per policy the mean with the
seeds' [lowest, highest]. (compare pools seeds itself only for sweep points of one run; here each
seed has its own SFT policy and RM, so a run of its own.) With --markdown
FILE, also that table as markdown. Reruns skip what is done (rlhf's lineage), so an interrupted
study picks up where it stopped.

    python benchmarks/stage3_study.py                                  # experiment=toy_surpass, seeds 0-2
    python benchmarks/stage3_study.py --seeds 0 --algos grpo --runs-dir /tmp/runs
    python benchmarks/stage3_study.py --report-only --markdown study.md   # tables from finished runs

Each seed is a run of its own (run=<experiment>_s<seed>, seed=<seed>): the seed moves every
model's initial weights and every sample, while the data (data.toy.seed) stays the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ALGOS = ["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp"]
# compare's per-policy figures this study reports, by mode
FIGURES = {"gold": "gold_score", "rm": "rm_score", "kl": "kl", "win_gold": "win_rate_gold"}
# each seed's reward model: accuracy on the held-out labels and against the gold order, and what
# "the longer answer wins" would score on the same pairs
RM_FIGURES = ("eval_accuracy", "eval_accuracy_low", "eval_accuracy_high", "gold_accuracy", "gold_accuracy_low",
              "gold_accuracy_high", "eval_longer_wins", "eval_same_length", "wrong_digit_accuracy")


def rlhf(log: Path, *args: str, multirun: bool = False) -> None:
    """Runs one rlhf command, its output appended to `log`; a failure stops the study with the
    log's end."""
    command = [sys.executable, "-m", "rlhf.cli", *(["-m"] if multirun else []), *args]
    print("+ rlhf", " ".join(args), file=sys.stderr, flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"`rlhf {' '.join(args)}` exited {done.returncode}; the end of {log}:\n"
                         + log.read_text(errors="replace")[-3000:])


def run_seed(experiment: str | None, seed: int, algos: list[str], runs_dir: str, extra: list[str],
             steps: list[list[str]] = ()) -> Path:
    """One seed's run (run=<experiment>_s<seed>; experiment None: the built-in default, toy_s<seed>);
    `steps`: more commands (their overrides) run after the stage-3 methods, before compare."""
    run = Path(runs_dir) / f"{experiment or 'toy'}_s{seed}"
    log = run / "study.log"  # every command's output, in order
    common = [*([f"experiment={experiment}"] if experiment else []), f"run={run.name}", f"seed={seed}",
              f"runs_dir={runs_dir}", "logger=tensorboard", *extra]
    rlhf(log, *common, "stage=prepare")
    rlhf(log, *common, "stage=pipeline", "stages=[sft,rm,ppo,dpo,bon_sft]")
    if algos:
        rlhf(log, *common, "stage=ppo", f"algo={','.join(algos)}", multirun=True)
    for step in steps:
        rlhf(log, *common, *step)
    rlhf(log, *common, "stage=compare")
    return run / "compare" / "results.json"


def value(entry):
    """compare writes a figure as a number, {mean, low, high} or (a win rate) {value, low, high}."""
    return entry.get("mean", entry.get("value")) if isinstance(entry, dict) else entry


def per_seed(results: dict) -> dict[str, dict]:
    """policy -> its figures in one compare's results.json."""
    out = {}
    for mode, policies in results["modes"].items():
        for policy, row in policies.items():
            figures = out.setdefault(policy, {})
            for name, key in FIGURES.items():
                if row.get(key) is not None:
                    figures[f"{name}_{mode}"] = value(row[key])
            figures[f"tokens_{mode}"] = row["tokens"]
    for policy, cost in results.get("costs", {}).items():
        out.setdefault(policy, {}).update(wall_s=cost["duration_s"], peak_rss_mb=cost["peak_rss_mb"])
    return out


def paired_differences(samples_path: Path, against: str, mode: str = "sampled") -> dict[str, dict]:
    """policy -> its gold score minus `against`'s, per prompt (the mean of each one's answers to
    it: the same prompts and sampling seeds for every policy), with a 95% bootstrap interval over
    prompts: whether a gain clears this seed's noise."""
    from rlhf.stages.compare.stats import bootstrap_ci

    per_prompt: dict[str, dict[int, list[float]]] = {}
    for line in samples_path.read_text().splitlines():
        row = json.loads(line)
        if row["mode"] == mode and row.get("gold_score") is not None:
            per_prompt.setdefault(row["policy"], {}).setdefault(row["prompt_index"], []).append(row["gold_score"])
    base = per_prompt[against]
    out = {}
    for policy, prompts in per_prompt.items():
        if policy == against:
            continue
        diff = np.array([statistics.fmean(prompts[i]) - statistics.fmean(base[i]) for i in sorted(base)])
        low, high = bootstrap_ci(diff, resamples=2000, confidence=0.95, seed=0)
        out[policy] = {"mean": float(diff.mean()), "low": low, "high": high}
    return out


def summarise(seeds: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """policy -> figure -> {mean, min, max, n} over the seeds that have it."""
    table: dict[str, dict] = {}
    for figures_by_policy in seeds.values():
        for policy, figures in figures_by_policy.items():
            for name, x in figures.items():
                table.setdefault(policy, {}).setdefault(name, []).append(x)
    return {policy: {name: {"mean": statistics.fmean(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
                     for name, xs in figures.items()}
            for policy, figures in table.items()}


def markdown(summary: dict[str, dict]) -> str:
    def cell(policy, name, digits=3):
        s = summary[policy].get(name)
        if s is None:
            return "–"
        if s["n"] == 1:
            return f"{s['mean']:.{digits}f}"
        return f"{s['mean']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"

    rows = ["| policy | gold, greedy | gold, sampled | sampled gold minus best-of-4's | win rate by gold vs SFT (sampled) | "
            "KL (nats) | tokens (sampled) | wall time (s) | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    order = sorted(summary, key=lambda p: -summary[p].get("gold_greedy", {"mean": 0})["mean"])
    for policy in order:
        rows.append(f"| {policy} | {cell(policy, 'gold_greedy')} | {cell(policy, 'gold_sampled')} | "
                    f"{cell(policy, 'vs_bon_sampled')} | {cell(policy, 'win_gold_sampled')} | {cell(policy, 'kl_sampled')} | "
                    f"{cell(policy, 'tokens_sampled', 1)} | {cell(policy, 'wall_s', 0)} | {cell(policy, 'peak_rss_mb', 0)} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="toy_surpass")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algos", nargs="*", default=ALGOS, help="stage-3 algorithms besides ppo (conf/algo/)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--report-only", action="store_true", help="read finished runs' compare results only")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    parser.add_argument("overrides", nargs="*", help="more rlhf overrides for every command, e.g. ppo.updates=40")
    args = parser.parse_args()

    seeds, reward_models = {}, {}
    for seed in args.seeds:
        path = Path(args.runs_dir) / f"{args.experiment}_s{seed}" / "compare" / "results.json"
        if not args.report_only:
            path = run_seed(args.experiment, seed, args.algos, args.runs_dir, args.overrides)
        seeds[seed] = per_seed(json.loads(path.read_text()))
        for policy, d in paired_differences(path.parent / "samples.jsonl", "bon:4").items():
            seeds[seed][policy].update(vs_bon_sampled=d["mean"], vs_bon_sampled_low=d["low"], vs_bon_sampled_high=d["high"])
        rm = json.loads((path.parent.parent / "rm" / "manifest.json").read_text())["metrics"]
        reward_models[seed] = {k: rm[k] for k in RM_FIGURES if k in rm}
    summary = summarise(seeds)
    if args.markdown:
        args.markdown.write_text(markdown(summary))
    print(json.dumps({"experiment": args.experiment, "seeds": args.seeds, "reward_models": reward_models,
                      "per_seed": seeds, "summary": summary}))


if __name__ == "__main__":
    main()
