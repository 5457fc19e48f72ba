"""`make quality`: every quality figure that README.md and the table at the top of docs/results.md
quote, rerun over seeds, each README claim checked against the range the docs state, and the
tables written as markdown (docs/quality.md by `make quality`). Exits 1 when a claim does not
hold, naming it. Seeds run as separate processes in parallel (--jobs, one torch thread each).

Two runs per seed (run=<part>_s<seed>, seed=<seed>: the seed moves every model's initial
weights and every sample; the data stay the same):

- toy: the built-in default toy: SFT, RM, PPO, DPO and best-of-n distillation (`stage=pipeline`),
  then a second round of the feedback loop on the same run (collect on round 1's PPO policy,
  rank by the simulated labeller, retrain the RM, PPO again), then compare (every policy and
  best-of-4, greedy and sampled).
- surpass: `experiment=toy_surpass` as benchmarks/stage3_study.py runs it (the stages above,
  the other stage-3 algorithms as one sweep, compare).

Differences are paired per prompt (the same prompts and sampling seeds for every policy of a
compare) with 95% bootstrap intervals over prompts; across seeds the tables give the mean with the
seeds' [lowest, highest]. Reruns skip what is done (rlhf's lineage), so an interrupted run picks up
where it stopped; --report-only rereads finished runs.

    python benchmarks/quality.py --markdown docs/quality.md          # what `make quality` runs
    python benchmarks/quality.py --parts toy --seeds 0 --jobs 1      # one part, one seed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage3_study as study  # noqa: E402  (a sibling script, not a package)

PARTS = ("toy", "surpass")
EXPERIMENT = {"toy": None, "surpass": "toy_surpass"}


# round 2 of the loop on the toy's run: every rm- and eval-split prompt answered 4 times by round
# 1's PPO policy, ranked by the simulated labeller, the RM retrained, PPO again
LOOP_ROUND_2 = ["stage=pipeline", "loop.round=2", "stages=[collect,rm,ppo]", "collect.max_prompts=null"]


def run_part(part: str, seed: int, runs_dir: str, extra: list[str]) -> Path:
    if part == "toy":
        return study.run_seed(None, seed, [], runs_dir, extra, steps=[LOOP_ROUND_2])
    return study.run_seed(EXPERIMENT[part], seed, study.ALGOS, runs_dir, extra)


def read_seed(results_path: Path) -> dict:
    """One seed's figures: compare's per policy, each policy's paired sampled-gold difference to
    SFT, best-of-4 and (the loop) round 1's PPO, its greedy-gold difference to SFT, and the RM's
    accuracies."""
    figures = study.per_seed(json.loads(results_path.read_text()))
    samples = results_path.parent / "samples.jsonl"
    for against, mode, name in (("sft", "sampled", "vs_sft_sampled"), ("sft", "greedy", "vs_sft_greedy"),
                                ("bon:4", "sampled", "vs_bon_sampled"), ("ppo", "sampled", "vs_ppo_sampled")):
        for policy, d in study.paired_differences(samples, against, mode).items():
            figures[policy].update({name: d["mean"], f"{name}_low": d["low"], f"{name}_high": d["high"]})
    rm = json.loads((results_path.parent.parent / "rm" / "manifest.json").read_text())["metrics"]
    return {"policies": figures, "rm": {k: rm[k] for k in study.RM_FIGURES if k in rm}}


@dataclass
class Claim:
    """A sentence the docs print, where, the range they state, and how a seed's figures show it."""
    part: str
    text: str
    where: str
    stated: str
    measure: Callable[[dict], float]  # one seed's figures -> the number the claim is about
    holds: Callable[[list[float]], bool]  # the numbers of every seed -> does the claim hold


def fig(policy: str, name: str) -> Callable[[dict], float]:
    return lambda seed: seed["policies"][policy][name]


def gap_closed(policy: str) -> Callable[[dict], float]:
    """The share of SFT's gap to best-of-4 (sampled gold) that `policy` closes."""
    def share(seed):
        p = seed["policies"]
        return (p[policy]["vs_sft_sampled"]) / (p["bon:4"]["vs_sft_sampled"])
    return share


def every(test: Callable[[float], bool]) -> Callable[[list[float]], bool]:
    return lambda xs: all(test(x) for x in xs)


CLAIMS = [
    Claim("toy", "On the default, PPO raises the gold score of sampled answers above SFT's", "README",
          "PPO's sampled gold minus SFT's, paired, > 0 on every seed", fig("ppo", "vs_sft_sampled"), every(lambda x: x > 0)),
    Claim("toy", "DPO ... close[s] most of the gap to best-of-4 sampling", "README",
          "DPO's share of SFT's gap to best-of-4 > 0.5, mean of the seeds", gap_closed("dpo"),
          lambda xs: statistics.fmean(xs) > 0.5),
    Claim("toy", "best-of-4 distillation close[s] most of the gap to best-of-4 sampling", "README",
          "bon_sft's share of SFT's gap to best-of-4 > 0.5, mean of the seeds", gap_closed("bon_sft"),
          lambda xs: statistics.fmean(xs) > 0.5),
    Claim("toy", "a second round of the feedback loop lifts PPO again", "README",
          "round 2's PPO sampled gold minus round 1's, paired, > 0 in the mean of the seeds",
          fig("round_2/ppo", "vs_ppo_sampled"), lambda xs: statistics.fmean(xs) > 0),
    Claim("surpass", "PPO lifts SFT's greedy gold from 0.77", "README",
          "SFT greedy gold in [0.75, 0.80] on every seed", fig("sft", "gold_greedy"), every(lambda x: 0.75 <= x <= 0.80)),
    Claim("surpass", "... to 0.97", "README", "PPO greedy gold >= 0.95 on every seed (0.97 the mean)",
          fig("ppo", "gold_greedy"), every(lambda x: x >= 0.95)),
    Claim("surpass", "and beats best-of-4 on every seed", "README",
          "PPO's sampled gold minus best-of-4's, paired: its interval's lower end above 0 on every seed",
          fig("ppo", "vs_bon_sampled_low"), every(lambda x: x > 0)),
    Claim("surpass", "RM gold accuracy 0.927-0.939", "docs/results.md", ">= 0.85 on every seed (the 'longer wins' rule beside it)",
          lambda seed: seed["rm"]["gold_accuracy"], every(lambda x: x >= 0.85)),
]


def check(claims: list[Claim], parts: dict[str, dict[int, dict]]) -> list[dict]:
    out = []
    for c in claims:
        if c.part not in parts:
            continue
        values = [c.measure(parts[c.part][s]) for s in sorted(parts[c.part])]
        out.append({"part": c.part, "claim": c.text, "where": c.where, "stated": c.stated, "values": values,
                    "holds": bool(c.holds(values))})
    return out


def markdown(parts: dict[str, dict[int, dict]], checked: list[dict], header: dict) -> str:
    lines = ["# Quality figures, rerun (`make quality`)", "",
             "Written by benchmarks/quality.py; do not edit by hand. "
             f"Commit {header['commit']}, {header['date']}, {header['machine']}; seeds {header['seeds']}, "
             f"{header['jobs']} at a time, one torch thread each; {header['wall_min']:.1f} min in all.", "",
             "## The claims", "", "| part | claim (where) | checked as | per seed | holds |", "|---|---|---|---|---|"]
    for c in checked:
        values = ", ".join(f"{x:+.3f}" if "minus" in c["stated"] else f"{x:.3f}" for x in c["values"])
        lines.append(f"| {c['part']} | {c['claim']} ({c['where']}) | {c['stated']} | {values} | "
                     f"{'yes' if c['holds'] else '**no**'} |")
    for part, seeds in parts.items():
        summary = study.summarise({s: f["policies"] for s, f in seeds.items()})
        lines += ["", f"## {part}: every policy, mean [lowest, highest] over seeds", "", study.markdown(summary).rstrip(),
                  "", "Paired differences per seed (sampled gold unless named; 95% bootstrap interval over prompts):", ""]
        for seed, f in sorted(seeds.items()):
            rows = []
            for policy, figures in f["policies"].items():
                names = ["vs_sft_sampled", "vs_sft_greedy", "vs_bon_sampled"] + (["vs_ppo_sampled"] if "round_" in policy else [])
                rows += [f"{policy} minus {name[3:].replace('_', ' ')} {figures[name]:+.3f} "
                         f"[{figures[name + '_low']:+.3f}, {figures[name + '_high']:+.3f}]" for name in names if name in figures]
            lines.append(f"- seed {seed}: " + "; ".join(rows))
        rm = {s: f["rm"] for s, f in seeds.items()}
        lines += ["", "Reward model per seed: accuracy on held-out labels, against the gold order, and what "
                  "'the longer answer wins' scores on the same pairs:", ""]
        for seed, m in sorted(rm.items()):
            lines.append(f"- seed {seed}: eval {m.get('eval_accuracy', float('nan')):.3f}, gold "
                         f"{m.get('gold_accuracy', float('nan')):.3f}, longer wins {m.get('eval_longer_wins', float('nan')):.3f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at once, one torch thread each")
    parser.add_argument("--runs-dir", default="runs/quality")
    parser.add_argument("--report-only", action="store_true", help="read finished runs only")
    parser.add_argument("--markdown", type=Path, help="write the tables here (make quality: docs/quality.md)")
    parser.add_argument("overrides", nargs="*", help="more rlhf overrides for every command (smaller sizes for a try)")
    args = parser.parse_args()

    start = time.monotonic()
    tasks = [(part, seed) for part in args.parts for seed in args.seeds]
    if args.report_only:
        paths = [Path(args.runs_dir) / f"{EXPERIMENT[part] or 'toy'}_s{seed}" / "compare" / "results.json"
                 for part, seed in tasks]
    else:
        if args.jobs > 1:
            os.environ["OMP_NUM_THREADS"] = "1"  # each process one thread: the seeds share the cores
        with ThreadPoolExecutor(args.jobs) as pool:
            paths = list(pool.map(lambda t: run_part(t[0], t[1], args.runs_dir, args.overrides), tasks))
    parts: dict[str, dict[int, dict]] = {}
    for (part, seed), path in zip(tasks, paths):
        parts.setdefault(part, {})[seed] = read_seed(path)
    checked = check(CLAIMS, parts)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    header = {"commit": commit or "unknown", "date": time.strftime("%Y-%m-%d"), "seeds": args.seeds, "jobs": args.jobs,
              "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
              "wall_min": (time.monotonic() - start) / 60}
    if args.markdown:
        args.markdown.write_text(markdown(parts, checked, header))
    print(json.dumps({"header": header, "claims": checked, "parts": parts}))
    failed = [c for c in checked if not c["holds"]]
    for c in failed:
        print(f"quality: does not hold: {c['claim']} ({c['where']}): {c['stated']}; measured {c['values']}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
