"""`rlhf stage=prepare`: run the data layer alone and report what every stage would get.

Loads, validates, splits and tokenizes the configured data, prints a summary (records per split
and kind, token-length percentiles, skipped records by reason) and writes it to the manifest.
It is the check to run before paying for cluster time.
"""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from rlhf.core.artifacts import StageRun
from rlhf.config import DataFormat, RLHFConfig
from rlhf.data import DataBundle, describe_source, load_data, render_prompt, render_response, toy
from rlhf.models import load_tokenizer


def run(cfg: RLHFConfig, stage_run: StageRun) -> DataBundle:
    tokenizer = load_tokenizer(cfg.model)
    bundle = load_data(cfg.data, tokenizer)
    summary = bundle.summary()
    if cfg.data.format is DataFormat.toy:  # what the demonstrator's settings (data.toy) made
        summary["toy_demonstrations"] = dict(Counter(toy.demonstration_flaw(d.prompt, d.response)
                                                     for d in bundle.every.demonstrations).most_common())
    kinds = Counter(i for p in bundle.every.prompts if p.constraints for i in p.constraints.ids)
    if kinds:  # verifiable instructions (the ifeval format): how often each kind is asked for, per split
        summary["instructions"] = {"all": dict(kinds), **{
            name: dict(Counter(i for p in s.prompts if p.constraints for i in p.constraints.ids))
            for name, s in bundle.splits.items()}}
    stage_run.manifest["inputs"] = {"data": describe_source(cfg.data)}
    stage_run.manifest["data"] = summary
    stage_run.metrics.update({"records": bundle.records_kept, "skipped": bundle.skips.total,
                              "left_out": bundle.dropped.total, "shortened": bundle.truncated.total,
                        **{f"{name}_prompts": len(s.prompts) for name, s in bundle.splits.items()}})
    console = Console()
    console.print(summary_table(summary))
    for kind, title in (("skipped", "skipped records (data.on_error=skip)"),
                        ("dropped", "records left out (over the token limits, empty demonstrations, filtered)"),
                        ("truncated", "records shortened to the token limits (data.truncate)")):
        if summary[kind]:
            console.print(reasons_table(summary, kind, title))
    if len(summary["sources"]) > 1:
        console.print(sources_table(summary))
    if "toy_demonstrations" in summary:
        counts = summary["toy_demonstrations"]
        console.print("toy demonstrations: " + ", ".join(f"{k} {v} ({v / sum(counts.values()):.1%})"
                                                          for k, v in counts.items()))
    if kinds:
        console.print("instructions: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
    for name, split in bundle.splits.items():
        for record in (split.demonstrations or split.comparisons or split.prompts)[: cfg.prepare.examples_per_split]:
            console.print(f"[bold]{name}[/bold] example:", repr(example_text(tokenizer, record)), highlight=False)
    console.print(f"manifest: {stage_run.dir / 'manifest.json'}")
    return bundle


def example_text(tokenizer, record) -> str:
    """The exact text a stage trains on: the prompt, and the (best) response if there is one."""
    responses = [record.response] if hasattr(record, "response") else list(getattr(record, "responses", ()))
    return render_prompt(tokenizer, record.prompt) + (render_response(tokenizer, responses[0]) if responses else "")


def summary_table(summary: dict) -> Table:
    table = Table(title=f"data: {summary['source']}  ({summary['rows_read']} rows read, "
                        f"{summary['records_kept']} records kept)")
    for column in ("split", "demos", "comparisons", "prompts", "prompt tokens", "response tokens"):
        table.add_column(column, justify="left" if column == "split" else "right")
    notes = ["tokens: p50/p90/p99/max after formatting"]
    for name, s in summary["splits"].items():
        table.add_row(name, str(s["demonstrations"]), str(s["comparisons"]), str(s["prompts"]),
                      _pct(s["prompt_tokens"]), _pct(s["response_tokens"]))
    if summary["unassigned_prompts"]:
        notes.append(f"{summary['unassigned_prompts']} prompts are in no split "
                     "(data.splits fractions sum below 1)")
    table.caption = "; ".join(notes)
    return table


def reasons_table(summary: dict, kind: str, title: str) -> Table:
    table = Table(title=title)
    table.add_column("reason")
    table.add_column("count", justify="right")
    first_at = summary.get(f"{kind}_first_at", {})
    if first_at:
        table.add_column("first at")
    for reason, count in sorted(summary[kind].items(), key=lambda kv: -kv[1]):
        table.add_row(reason, str(count), *([first_at.get(reason, "")] if first_at else []))
    return table


def sources_table(summary: dict) -> Table:
    table = Table(title="per source")
    for column in ("source", "rows read", "records kept", "empty responses", "skipped", "left out", "shortened"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name, s in summary["sources"].items():
        table.add_row(name, str(s["rows_read"]), str(s["records_kept"]), str(s["empty_responses"]),
                      *(str(sum(s[k].values())) for k in ("skipped", "dropped", "truncated")))
    return table


def _pct(p: dict) -> str:
    return f"{p['p50']}/{p['p90']}/{p['p99']}/{p['max']}" if p else "-"
