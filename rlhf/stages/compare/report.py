"""report.md and the plots, drawn from results.json alone (so `compare.from_results=<file>`
redraws them without sampling), and PPO's training curves read from its TensorBoard logs."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from rlhf.core.artifacts import write_atomic
from rlhf.stages.compare.stats import seedless


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
    methods, costs = results.get("methods") or {}, results.get("costs") or {}
    if methods or costs:
        lines += ["## Policies", "", "How each policy was trained (stage 3: algorithm, reward source), and what "
                  "its stage cost (wall time, peak RSS of its process).", "",
                  "| policy | trained as | wall time | peak RSS |", "|---|---|---|---|"]
        for name in results["modes"][next(iter(results["modes"]))]:
            if name in methods or name in costs:
                cost = costs.get(name, {})
                lines.append(f"| {name} | {methods.get(name, '–')} | {_seconds(cost.get('duration_s'))} | "
                             f"{_mb(cost.get('peak_rss_mb'))} |")
        lines.append("")
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
        lines += _difference_lines(table, results["baseline"])
        lines += _source_lines(mode, table, results["baseline"])
        lines += _instruction_lines(mode, table)
    for mode, rows in (results.get("by_method") or {}).items():
        lines += [f"## {mode}, over seeds", "", "Policies that differ only by seed pooled: the mean of their "
                  "figures, [lowest, highest] among them; wall time and peak RSS their medians.", "",
                  "| policies | trained as | seeds | RM score | gold score | win rate by RM | win rate by gold | KL (nats) "
                  "| gold during training: peak (update) | wall time | peak RSS |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for group, row in rows.items():
            peak = row.get("eval_gold_peak")
            during = (f"{peak['value']:.3f} ({peak['update']}); {peak['last']:.3f} at {peak['last_update']}"
                      if peak else "–")
            lines.append(f"| {group}@seed=* | {row['label']} | {len(row['policies'])} | {_fmt(row['rm_score'])} | {_fmt(row['gold_score'])} | "
                         f"{_fmt(row['win_rate_rm'])} | {_fmt(row['win_rate_gold'])} | {_fmt(row['kl'])} | {during} | "
                         f"{_seconds(row['duration_s'])} | {_mb(row['peak_rss_mb'])} |")
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


def _difference_lines(table: dict, baseline: str) -> list[str]:
    """Each policy's RM and gold score minus the baseline's, paired per prompt, with intervals."""
    found = [(name, e) for name, e in table.items() if e.get("gold_minus_baseline") or e.get("rm_minus_baseline")]
    if not found:
        return []
    lines = [f"Minus `{baseline}`'s, paired per prompt (answer j against answer j):", "",
             "| policy | RM score | gold score |", "|---|---|---|"]
    lines += [f"| {name} | {_signed(e.get('rm_minus_baseline'))} | {_signed(e.get('gold_minus_baseline'))} |"
              for name, e in found]
    return lines + [""]


def _source_lines(mode: str, table: dict, baseline: str) -> list[str]:
    """Prompts from two or more sources (a test set of kinds seen in training, one of kinds held
    out): each policy's scores per source, and minus the baseline's, paired per prompt."""
    found = {name: e["by_source"] for name, e in table.items() if e.get("by_source")}
    if not found:
        return []
    lines = [f"### {mode}: by source", "", f"Each source's prompts apart; minus `{baseline}`'s paired per prompt.", "",
             "| policy | source | prompts | RM score | minus baseline | gold score | minus baseline |",
             "|---|---|---|---|---|---|---|"]
    for name, sources in found.items():
        lines += [f"| {name} | {source} | {e['prompts']} | {_fmt(e['rm_score'])} | {_signed(e['rm_score_minus_baseline'])} "
                  f"| {_fmt(e['gold_score'])} | {_signed(e['gold_score_minus_baseline'])} |"
                  for source, e in sources.items()]
    return lines + [""]


def _signed(x) -> str:
    return "–" if x is None else f"{x['mean']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"


def _instruction_lines(mode: str, table: dict) -> list[str]:
    """IFEval's four accuracies per policy beside answer length, then instruction-level strict
    accuracy by kind: for data whose prompts carry verifiable instructions."""
    followed = {name: e["instructions"] for name, e in table.items() if e.get("instructions")}
    if not followed:
        return []
    lines = [f"### {mode}: instructions followed", "",
             "Prompt-level: answers that follow every instruction of their prompt; instruction-level: instructions "
             "followed, pooled over answers. Strict reads the answer as written, loose also without its first or "
             "last line or markdown asterisks (IFEval's two readings). The gold score above is prompt-level strict.",
             "", "| policy | prompt-level strict | prompt-level loose | instruction-level strict | instruction-level loose "
             "| tokens |", "|---|---|---|---|---|---|"]
    for name, f in followed.items():
        lines.append(f"| {name} | {_fmt(f['prompt_strict'])} | {_fmt(f['prompt_loose'])} | {_fmt(f['instruction_strict'])} "
                     f"| {_fmt(f['instruction_loose'])} | {table[name]['tokens']:.1f} |")
    kinds = sorted({k for f in followed.values() for k in f["by_kind"]})
    lines += ["", "Instruction-level strict accuracy by kind (instructions of that kind among the prompts' answers):", "",
              "| kind | " + " | ".join(followed) + " |", "|---|" + "---|" * len(followed)]
    for kind in kinds:
        cells = [f"{f['by_kind'][kind]['strict']:.3f} ({f['by_kind'][kind]['instructions']})" if kind in f["by_kind"]
                 else "–" for f in followed.values()]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines + [""]


def _seconds(x) -> str:
    return "–" if x is None else f"{x:.0f} s"


def _mb(x) -> str:
    return "–" if x is None else f"{x:.0f} MB"


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

    if results.get("eval_curves"):
        written.append(gold_vs_sqrt_kl(results, out))

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


def gold_vs_sqrt_kl(results: dict, out: Path) -> Path:
    """Gold score against sqrt(KL to the reference) along training (Gao et al. 2022's axes), one
    curve per policy up to its seed: the mean over its seeds at each evaluation, from update 0
    (the starting policy). Colour by algorithm, line style by reward source (model solid,
    ensemble dashed, function dotted). bon:<n> from the sampled table as a star."""
    import matplotlib.pyplot as plt

    groups: dict[str, tuple[dict, list[dict]]] = {}
    for name, curve in results["eval_curves"].items():  # one curve per policy up to its seed
        _, runs = groups.setdefault(seedless(name), (curve, []))
        runs.append({e["update"]: e for e in curve["evals"]})
    algorithms = sorted({curve.get("algorithm", "?") for curve, _ in groups.values()})
    colours = {a: plt.get_cmap("tab10")(i % 10) for i, a in enumerate(algorithms)}
    labels = [curve["label"] for curve, _ in groups.values()]
    shared = {label for label in labels if labels.count(label) > 1}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for group, (curve, runs) in sorted(groups.items()):
        label = curve["label"]
        updates = sorted(set.intersection(*(set(u for u, e in r.items() if "kl_sampled_mean" in e or u == 0)
                                            for r in runs)))
        xs = [math.sqrt(max(float(np.mean([r[u].get("kl_sampled_mean", 0.0) for r in runs])), 0.0)) for u in updates]
        ys = [float(np.mean([r[u]["gold_sampled_mean"] for r in runs])) for u in updates]
        style = {"ensemble": "--", "model": "-"}.get(curve.get("reward"), ":")
        seeds = f", {len(runs)} seeds" if len(runs) > 1 else ""
        ax.plot(xs, ys, style, marker="o", ms=3, color=colours[curve.get("algorithm", "?")],
                label=f"{group}: {label}{seeds}" if label in shared else f"{label}{seeds}")
    for name, e in results["modes"].get("sampled", {}).items():
        if name.startswith("bon:") and e.get("gold_score") and e.get("kl"):
            x, y = math.sqrt(max(e["kl"]["mean"], 0.0)), e["gold_score"]["mean"]
            ax.plot(x, y, "k*", ms=10)
            ax.annotate(f"{name} (compare's prompts)", (x, y), fontsize=8, xytext=(4, -10), textcoords="offset points")
    ax.set_xlabel("sqrt(KL to the reference), sqrt(nats)")
    ax.set_ylabel("gold score of sampled answers")
    ax.set_title("gold score vs sqrt(KL) during training (eval prompts; mean over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, out / "gold_vs_sqrt_kl.png")


def _moving_mean(values: list[float], window: int = 5) -> list[float]:
    return [float(np.mean(values[max(0, i - window + 1): i + 1])) for i in range(len(values))]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
