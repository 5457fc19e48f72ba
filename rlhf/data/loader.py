"""load_data: source -> validated records -> splits. The entry point every stage calls."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from rlhf.config import SPLITS, DataConfig, DataFormat
from rlhf.data import sources, toy
from rlhf.data.formatting import encode_prompts, encode_responses
from rlhf.data.records import (Comparison, DataError, Demonstration, Prompt, Record, RecordError,
                               prompt_key)

log = logging.getLogger(__name__)

SKIP_HINT = ("Fix or remove the record, or set data.on_error=skip to drop bad records "
             "(they are counted by reason and reported).")


@dataclass
class Split:
    name: str
    demonstrations: list[Demonstration] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)  # distinct prompts of every record here
    prompt_tokens: list[int] = field(default_factory=list)  # per distinct prompt
    response_tokens: list[int] = field(default_factory=list)  # per response of every record

    def counts(self) -> dict[str, int]:
        return {"demonstrations": len(self.demonstrations), "comparisons": len(self.comparisons),
                "prompts": len(self.prompts)}


@dataclass
class Skips:
    """Bad records dropped under data.on_error=skip, by reason, with the first place seen."""

    counts: Counter = field(default_factory=Counter)
    first_at: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, location: str) -> None:
        self.counts[reason] += 1
        self.first_at.setdefault(reason, location)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class DataBundle:
    source: str
    splits: dict[str, Split]
    rows_read: int
    records_kept: int
    skips: Skips
    unassigned_prompts: int  # prompts outside every split because the fractions sum below 1
    # score(prompt, response) -> float of a task with a known answer (the toy task), else None
    gold_scorer: Callable[[object, str], float] | None

    def require(self, split: str, kind: str) -> list:
        """The records of one kind in one split; an empty list is an error a stage can act on."""
        items = getattr(self.splits[split], kind)
        if not items:
            hint = (" Comparisons give demonstrations with data.demonstrations_from_comparisons=true."
                    if kind == "demonstrations" else "")
            raise DataError(f"{self.source}: split {split!r} has no {kind}; this stage needs them."
                            f"{hint} Per split: { {n: s.counts() for n, s in self.splits.items()} }")
        return items

    def summary(self) -> dict:
        """Counts and length percentiles, for the prepare table and every stage's manifest."""
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "records_kept": self.records_kept,
            "skipped": dict(self.skips.counts),
            "skipped_first_at": dict(self.skips.first_at),
            "unassigned_prompts": self.unassigned_prompts,
            "splits": {name: {**s.counts(),
                              "prompt_tokens": percentiles(s.prompt_tokens),
                              "response_tokens": percentiles(s.response_tokens)}
                       for name, s in self.splits.items()},
        }


def describe_source(cfg: DataConfig) -> dict:
    """What the records came from, for manifests: a content hash where it is a local file."""
    if cfg.path:
        from rlhf.core.artifacts import sha256_of

        return {"path": cfg.path, "sha256": sha256_of(Path(cfg.path)), "format": cfg.format.value}
    if cfg.hub_id:
        return {"hub_id": cfg.hub_id, "name": cfg.hub_name, "data_dir": cfg.hub_data_dir,
                "split": cfg.hub_split, "revision": cfg.hub_revision, "format": cfg.format.value}
    return {"generator": "toy", "format": "toy", "seed": cfg.toy.seed, "num_prompts": cfg.toy.num_prompts}


def percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    p = np.percentile(np.asarray(values), [50, 90, 99])
    return {"p50": int(p[0]), "p90": int(p[1]), "p99": int(p[2]), "max": int(max(values))}


def load_data(cfg: DataConfig, tokenizer) -> DataBundle:
    skip = cfg.on_error.value == "skip"
    skips = Skips()

    def reject(location: str, error: RecordError) -> None:
        if not skip:
            raise DataError(f"{location}: {error}. {SKIP_HINT}") from None
        skips.add(error.kind, location)

    # 1. rows -> records, each checked by its adapter
    located: list[tuple[str, Record]] = []
    rows_read = 0
    if cfg.format is DataFormat.toy:
        source = "toy"
        for i, record in enumerate(toy.generate(cfg.toy)):
            located.append((f"toy record {i}", record))
        rows_read = len(located)
    else:
        source, rows = sources.read_rows(cfg)
        if cfg.format is DataFormat.oasst:
            rows = sources.oasst_conversations(rows, cfg.fields)
        adapt = sources.ADAPTERS[cfg.format.value]
        for location, row in rows:
            rows_read += 1
            if isinstance(row, RecordError):
                reject(location, row)
                continue
            try:
                located.extend((location, r) for r in adapt(row, cfg.fields, cfg.name))
            except RecordError as e:
                reject(location, e)

    # 2. length after formatting: the one check that needs the tokenizer
    kept: list[tuple[Record, int, list[int]]] = []
    for (location, record), (prompt_len, response_lens) in zip(located, _lengths(located, tokenizer)):
        try:
            _check_length(record, prompt_len, response_lens, cfg)
        except RecordError as e:
            reject(location, e)
            continue
        kept.append((record, prompt_len, response_lens))

    # 3. split by prompt hash
    splits = {name: Split(name) for name in SPLITS}
    seen_prompts: dict[str, set[str]] = {name: set() for name in SPLITS}
    unassigned: set[str] = set()
    for record, prompt_len, response_lens in kept:
        key = prompt_key(record.prompt)
        names = assign_splits(key, cfg.splits)
        if not names:
            unassigned.add(key)
        for name in names:
            _add(splits[name], record, cfg.demonstrations_from_comparisons)
            splits[name].response_tokens.extend(response_lens)
            if key not in seen_prompts[name]:
                seen_prompts[name].add(key)
                splits[name].prompts.append(Prompt(record.prompt, getattr(record, "source", "")))
                splits[name].prompt_tokens.append(prompt_len)

    for name, s in splits.items():
        if getattr(cfg.splits, name) > 0 and not s.prompts:
            raise DataError(f"{source}: split {name!r} is empty (data.splits.{name}="
                            f"{getattr(cfg.splits, name)} of {len(kept)} valid records). Use more "
                            f"data, raise the fraction, or set it to 0 if the split is not needed.")
    bundle = DataBundle(source, splits, rows_read, len(kept), skips, len(unassigned),
                        toy.gold_score if cfg.format is DataFormat.toy else None)
    if skips.total:
        log.warning("skipped %d bad record(s) of %d: %s", skips.total, rows_read,
                    ", ".join(f"{k}={v} (first at {skips.first_at[k]})" for k, v in skips.counts.items()))
    return bundle


def assign_splits(key: str, cfg) -> list[str]:
    """The split(s) of a prompt: a SHA-256 of salt + prompt, read as a uniform number in [0, 1),
    falls into one bucket per split (shared splits own one bucket together)."""
    digest = hashlib.sha256(f"{cfg.salt}\0{key}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    buckets: list[tuple[float, list[str]]] = []
    for name in SPLITS:
        if name in cfg.shared[1:]:
            continue  # rides in the first shared split's bucket
        group = list(cfg.shared) if name in cfg.shared else [name]
        buckets.append((getattr(cfg, name), group))
    start = 0.0
    for width, group in buckets:
        if start <= u < start + width:
            return group
        start += width
    return []


def _lengths(located: list[tuple[str, Record]], tokenizer) -> Iterable[tuple[int, list[int]]]:
    """Token counts of each record's formatted prompt and responses, tokenized in batches."""
    prompts = {prompt_key(r.prompt): r.prompt for _, r in located}
    prompt_len = dict(zip(prompts, map(len, encode_prompts(tokenizer, list(prompts.values())))))
    responses = sorted({t for _, r in located for t in _responses(r)})
    response_len = dict(zip(responses, map(len, encode_responses(tokenizer, responses))))
    for _, r in located:
        yield prompt_len[prompt_key(r.prompt)], [response_len[t] for t in _responses(r)]


def _responses(record: Record) -> tuple[str, ...]:
    if isinstance(record, Demonstration):
        return (record.response,)
    if isinstance(record, Comparison):
        return record.responses
    return ()


def _check_length(record: Record, prompt_len: int, response_lens: list[int], cfg: DataConfig) -> None:
    if prompt_len > cfg.max_prompt_tokens:
        raise RecordError("prompt", f"over-long after formatting: {prompt_len} tokens > "
                          f"data.max_prompt_tokens={cfg.max_prompt_tokens}", "prompt_too_long")
    for i, n in enumerate(response_lens):
        if n > cfg.max_response_tokens:
            if isinstance(record, Demonstration):
                name = "response"
            else:
                name = ("chosen", "rejected")[i] if record.k == 2 else f"responses[{i}] (0 = best)"
            raise RecordError(name, f"over-long after formatting: {n} tokens > "
                              f"data.max_response_tokens={cfg.max_response_tokens}", "response_too_long")


def _add(split: Split, record: Record, demos_from_comparisons: bool) -> None:
    if isinstance(record, Demonstration):
        split.demonstrations.append(record)
    elif isinstance(record, Comparison):
        split.comparisons.append(record)
        if demos_from_comparisons and record.ranks[0] < record.ranks[1]:
            split.demonstrations.append(Demonstration(record.prompt, record.responses[0], record.source))
