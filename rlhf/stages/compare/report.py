"""report.md and the plots, drawn from results.json alone (so `compare.from_results=<file>`
redraws them without sampling), and PPO's training curves read from its TensorBoard logs."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from rlhf.core.artifacts import write_atomic


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


def write_report(results: dict, out: Path) -> None:
    lines = [f"# Compare: run `{results['run']}`", "", *report_lines(results, out)]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")


def report_lines(results: dict, out: Path) -> list[str]:
    """The report below its title: what was sampled, a table per mode, examples, the plots
    (drawn into `out`). evaluate's report.md holds them too, after its reward model's part."""
    sampled = (f"sampled mode: {results['samples_per_prompt']} answers per prompt at temperature "
               f"{results['temperature']} (seeds from {results['seed']}, the same for every policy)"
               if "sampled" in results["modes"] else "greedy answers")
    lines = [f"{results['prompts']} {results.get('prompts_from', 'held-out prompts')}; {sampled}. Win rates are "
             f"against `{results['baseline']}`, answer j against answer j, ties as halves; "
             f"[low, high] is a {results['confidence']:.0%} bootstrap interval over prompts "
             f"({results['bootstrap_resamples']} resamples). \"Longer than baseline\" is the win rate by length "
             "(tokens): what a judge that prefers longer answers would give.", ""]
    for mode, table in results["modes"].items():
        lines += [f"## {mode}", "",
                  "| policy | RM score | gold score | win rate by RM | win rate by gold | longer than baseline | KL (nats) "
                  "| tokens | EOS | distinct-1/2 |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in table.items():
            kl = _fmt(e["kl"]) + (" (analytic)" if e.get("kl_method") == "analytic" and e["kl"] else "")
            lines.append(f"| {name} | {_fmt(e['rm_score'])} | {_fmt(e['gold_score'])} | {_fmt(e['win_rate_rm'])} | "
                         f"{_fmt(e['win_rate_gold'])} | {_fmt(e.get('win_rate_length'))} | {kl} | {e['tokens']:.1f} | "
                         f"{e['eos_rate']:.0%} | {e['distinct_1']:.2f} / {e['distinct_2']:.2f} |")
        lines.append("")
    if results["examples"]:
        lines += ["## Examples", ""]
        for ex in results["examples"]:
            lines += [f"**{ex['prompt']}** ({ex['mode']}, answer 0)", ""]
            lines += [f"- `{name}`: {answer}" for name, answer in ex["answers"].items()]
            lines.append("")
    plots = write_plots(results, out)
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return lines


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

        # the RM's score against KL; the gold score's when no reward model judged (e.g. DPO runs)
        y = "rm_score" if any(e["rm_score"] is not None for e in table.values()) else "gold_score"
        points = {n: e for n, e in table.items() if e["kl"] is not None and e[y] is not None}
        if points:
            fig, ax = plt.subplots(figsize=(4.5, 3.5))
            for name, e in points.items():
                ax.errorbar(e["kl"]["mean"], e[y]["mean"], capsize=3, fmt="o",
                            yerr=[[e[y]["mean"] - e[y]["low"]], [e[y]["high"] - e[y]["mean"]]])
                ax.annotate(name, (e["kl"]["mean"], e[y]["mean"]), fontsize=8, xytext=(4, 4),
                            textcoords="offset points")
            ax.set_xlabel("KL to reference (nats)")
            ax.set_ylabel("RM score (normalised)" if y == "rm_score" else "gold score")
            ax.set_title(f"{'RM' if y == 'rm_score' else 'gold'} score vs KL ({mode})", fontsize=9)
            fig.tight_layout()
            written.append(_save(fig, out / ("rm_vs_kl.png" if y == "rm_score" else "gold_vs_kl.png")))

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
