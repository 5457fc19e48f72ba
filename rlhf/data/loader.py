"""load_data: source -> validated records -> splits. The entry point every stage calls."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rlhf.config import SPLITS, DataConfig, DataFormat, Truncate
from rlhf.data import files, oasst, sources, toy
from rlhf.data.formatting import encode_prompts, encode_responses, truncate_prompt
from rlhf.data.records import (Comparison, DataError, Demonstration, Dropped, Prompt, Record,
                               RecordError, prompt_key)

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
class Tally:
    """Records by reason (skipped as bad, dropped, truncated), with the first place each reason
    was seen and the counts per source."""

    counts: Counter = field(default_factory=Counter)
    first_at: dict[str, str] = field(default_factory=dict)
    by_source: dict[str, Counter] = field(default_factory=dict)

    def add(self, reason: str, location: str, source: str = "") -> None:
        self.counts[reason] += 1
        self.first_at.setdefault(reason, location)
        self.by_source.setdefault(source, Counter())[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


Skips = Tally  # bad records dropped under data.on_error=skip


@dataclass
class DataBundle:
    source: str
    splits: dict[str, Split]
    rows_read: int
    records_kept: int
    skips: Tally  # bad records, under data.on_error=skip
    unassigned_prompts: int  # prompts outside every split because the fractions sum below 1
    # score(prompt, response) -> float of a task with a known answer (the toy task), else None
    gold_scorer: Callable[[object, str], float] | None
    dropped: Tally = field(default_factory=Tally)  # left out on purpose, whatever on_error says
    truncated: Tally = field(default_factory=Tally)  # kept, shortened to the token limits
    every: Split = field(default_factory=lambda: Split("all"))  # every kept record, in read order
    per_source: dict[str, dict] = field(default_factory=dict)  # rows read, records kept, empty responses

    def require(self, split: str, kind: str, stage: str) -> list:
        """The records of one kind in one split that `stage` needs. Any split may be empty after
        loading (prepare summarises a comparisons-only file); it is an error only here, when a
        stage that needs it runs."""
        items = getattr(self.every if split == "all" else self.splits[split], kind)
        if not items:
            hint = (" Comparisons give demonstrations with data.demonstrations_from_comparisons=true."
                    if kind == "demonstrations" and not any(s.demonstrations for s in self.splits.values())
                    and any(s.comparisons for s in self.splits.values()) else "")
            raise DataError(f"stage {stage} needs {kind} in split {split!r}, and {self.source} has none there "
                            f"(per split: { {n: s.counts() for n, s in self.splits.items()} }). Use data that has "
                            f"them, or raise data.splits.{split} if it is 0 or small.{hint}")
        return items

    def summary(self) -> dict:
        """Counts and length percentiles, for the prepare table and every stage's manifest."""
        def by_source(tally: Tally, name: str) -> dict:
            return dict(tally.by_source.get(name, {}))

        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "records_kept": self.records_kept,
            "skipped": dict(self.skips.counts),
            "skipped_first_at": dict(self.skips.first_at),
            "dropped": dict(self.dropped.counts),
            "dropped_first_at": dict(self.dropped.first_at),
            "truncated": dict(self.truncated.counts),
            "truncated_first_at": dict(self.truncated.first_at),
            "unassigned_prompts": self.unassigned_prompts,
            # prompt turns with nothing in them, kept as they are (released HH-RLHF holds some)
            "empty_turns": sum(c.get("empty_turns", 0) for c in self.per_source.values()),
            "sources": {name: {**counts, "skipped": by_source(self.skips, name),
                               "dropped": by_source(self.dropped, name),
                               "truncated": by_source(self.truncated, name)}
                        for name, counts in self.per_source.items()},
            "splits": {name: {**s.counts(),
                              "prompt_tokens": percentiles(s.prompt_tokens),
                              "response_tokens": percentiles(s.response_tokens)}
                       for name, s in self.splits.items()},
        }


def describe_source(cfg: DataConfig) -> dict:
    """What the records came from, for manifests: a content hash where it is a local file."""
    described = _describe_one(cfg)
    if cfg.sources:
        described["sources"] = [_describe_one(s) for s in cfg.sources]
    return described


def _describe_one(cfg) -> dict:
    if cfg.path:
        from rlhf.core.artifacts import sha256_of

        return {"name": cfg.name, "path": cfg.path, "sha256": sha256_of(Path(cfg.path)),
                "format": cfg.format.value, "weight": cfg.weight}
    if cfg.hub_id:
        return {"name": cfg.name, "hub_id": cfg.hub_id, "hub_name": cfg.hub_name, "data_dir": cfg.hub_data_dir,
                "split": cfg.hub_split, "revision": cfg.hub_revision, "format": cfg.format.value,
                "weight": cfg.weight}
    return {"generator": "toy", "format": "toy", "seed": cfg.toy.seed, "num_prompts": cfg.toy.num_prompts}


def percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    p = np.percentile(np.asarray(values), [50, 90, 99])
    return {"p50": int(p[0]), "p90": int(p[1]), "p99": int(p[2]), "max": int(max(values))}


@dataclass
class _Located:
    location: str
    record: Record
    source: str
    key: str = ""  # the prompt as read: splits hash it, so truncation never moves a prompt
    prompt_len: int = 0
    response_lens: list[int] = field(default_factory=list)


def load_data(cfg: DataConfig, tokenizer) -> DataBundle:
    """Every source of `cfg` -> validated, length-fitted records -> splits. A split may come out
    empty: the stage that needs it says so (DataBundle.require)."""
    skip = cfg.on_error.value == "skip"
    skips, dropped, truncated = Tally(), Tally(), Tally()
    per_source: dict[str, dict] = {}

    def reject(item: _Located, error: RecordError) -> None:
        if isinstance(error, Dropped):
            dropped.add(error.kind, item.location, item.source)
        elif not skip:
            raise DataError(f"{item.location}: {error}. {SKIP_HINT}") from None
        else:
            skips.add(error.kind, item.location, item.source)

    # 1. rows -> records, each checked by its adapter
    located: list[_Located] = []
    labels = []
    for src in [cfg, *cfg.sources]:
        counts = per_source.setdefault(src.name, {"rows_read": 0, "records_kept": 0, "empty_responses": 0,
                                                  "empty_turns": 0})
        first = len(located)
        if src.format is DataFormat.toy:
            labels.append("toy")
            located += [_Located(f"toy record {i}", r, src.name) for i, r in enumerate(toy.generate(cfg.toy))]
            counts["rows_read"] = len(located) - first
        else:
            label, rows = files.read_rows(src)
            labels.append(label)
            rows = _counted(rows, counts)
            if src.format is DataFormat.oasst:
                rows = oasst.conversations(rows, src.fields, src.oasst)
            adapt = sources.adapter(src)
            for location, row in rows:
                if isinstance(row, RecordError):
                    reject(_Located(location, None, src.name), row)
                    continue
                try:
                    located.extend(_Located(location, r, src.name) for r in adapt(row, src.fields, src.name))
                except RecordError as e:
                    reject(_Located(location, None, src.name), e)
        located[first:] = _weighted(located[first:], src.weight, cfg.splits.salt)
    source = " + ".join(labels)

    # 2. length after formatting: the one check that needs the tokenizer
    kept: list[_Located] = []
    for item in _measured(located, tokenizer):
        try:
            _fit(item, tokenizer, cfg, truncated)
        except RecordError as e:
            reject(item, e)
            continue
        kept.append(item)
        per_source[item.source]["records_kept"] += 1
        per_source[item.source]["empty_responses"] += sum(not t.strip() for t in _responses(item.record))
        if not isinstance(item.record.prompt, str):
            per_source[item.source]["empty_turns"] += sum(not m["content"].strip() for m in item.record.prompt)

    # 3. split by prompt hash
    # a prompt of a source pinned to a split stays there whichever source holds it (the answers
    # `rlhf stage=collect` wrote to a test set's prompts are that test set's too)
    pinned_sources = {src.name: src.split for src in [cfg, *cfg.sources] if src.split}
    pinned = {item.key: pinned_sources[item.source] for item in kept if item.source in pinned_sources}
    splits, every, unassigned = _split(kept, cfg, pinned)
    bundle = DataBundle(source, splits, sum(c["rows_read"] for c in per_source.values()), len(kept), skips,
                        unassigned, _gold_scorer(cfg, kept),
                        dropped=dropped, truncated=truncated, every=every, per_source=per_source)
    for tally, what in ((skips, "skipped %d bad record(s)"), (dropped, "left out %d record(s)"),
                        (truncated, "shortened %d record(s) to the token limits")):
        if tally.total:
            log.warning(what + " of %d: %s", tally.total, bundle.rows_read,
                        ", ".join(f"{k}={v} (first at {tally.first_at[k]})" for k, v in tally.counts.items()))
    return bundle


def _split(kept: list[_Located], cfg: DataConfig, pinned: dict[str, str]) -> tuple[dict[str, Split], Split, int]:
    """The kept records into the splits their prompt's hash assigns (or the one split `pinned`
    gives the prompt), and all of them into `every`; each split lists a prompt once. Returns the
    splits, `every`, and how many prompts no split took."""
    splits = {name: Split(name) for name in SPLITS}
    every = Split("all")
    seen_prompts: dict[str, set[str]] = {name: set() for name in (*SPLITS, "all")}
    unassigned: set[str] = set()
    for item in kept:
        names = [pinned[item.key]] if item.key in pinned else assign_splits(item.key, cfg.splits)
        if not names:
            unassigned.add(item.key)
        for split in [*(splits[name] for name in names), every]:
            _add(split, item.record, cfg.demonstrations_from_comparisons)
            split.response_tokens.extend(item.response_lens)
            if item.key not in seen_prompts[split.name]:
                seen_prompts[split.name].add(item.key)
                split.prompts.append(Prompt(item.record.prompt, item.source, getattr(item.record, "constraints", None)))
                split.prompt_tokens.append(item.prompt_len)
    return splits, every, len(unassigned)


def _gold_scorer(cfg: DataConfig, kept: list[_Located]) -> Callable[[object, str], float] | None:
    """The toy's gold scorer, or for prompts with verifiable instructions their checks (every
    kept prompt must carry them, in its own record or another's of the same prompt, as the
    answers `rlhf stage=collect` ranked do: a gold that covers some prompts only would be no gold)."""
    if cfg.format is DataFormat.toy:
        return toy.gold_score
    constrained = [x for x in kept if getattr(x.record, "constraints", None) is not None]
    if not constrained:
        return None
    from rlhf.data.instructions import InstructionGold

    by_prompt = {}
    for x in constrained:  # keyed as InstructionGold looks prompts up: the prompt as the stages see it
        if by_prompt.setdefault(prompt_key(x.record.prompt), x.record.constraints) != x.record.constraints:
            raise DataError(f"{x.location}: the same prompt as an earlier record with other instructions "
                            f"({list(x.record.constraints.ids)}): one prompt, one set of instructions")
    plain = next((x for x in kept if prompt_key(x.record.prompt) not in by_prompt), None)
    if plain is not None:
        raise DataError(f"{plain.location}: a prompt without verifiable instructions beside {len(by_prompt)} with "
                        "them: compare and evaluate judge every prompt by its instructions, so give every source "
                        "the ifeval format, or evaluate the two kinds of data separately")
    return InstructionGold(by_prompt)


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


def _counted(rows, counts: dict):
    for item in rows:
        counts["rows_read"] += 1
        yield item


def _weighted(items: list[_Located], weight: float, salt: str) -> list[_Located]:
    """Each record int(weight) times, plus once more for a share frac(weight) of them picked by a
    hash of the prompt (the same records on every run)."""
    if weight == 1:
        return items
    whole, part = int(weight), weight - int(weight)
    out = []
    for item in items:
        copies = whole
        if part:
            digest = hashlib.sha256(f"{salt}\0weight\0{prompt_key(item.record.prompt)}".encode("utf-8")).digest()
            copies += int.from_bytes(digest[:8], "big") / 2**64 < part
        out += [item] * copies
    return out


def _measured(located: list[_Located], tokenizer) -> list[_Located]:
    """Sets each record's key and the token counts of its formatted prompt and responses,
    tokenized in batches."""
    prompts = {prompt_key(x.record.prompt): x.record.prompt for x in located}
    prompt_len = dict(zip(prompts, map(len, encode_prompts(tokenizer, list(prompts.values())))))
    responses = sorted({t for x in located for t in _responses(x.record)})
    response_len = dict(zip(responses, map(len, encode_responses(tokenizer, responses))))
    for x in located:
        x.key = prompt_key(x.record.prompt)
        x.prompt_len, x.response_lens = prompt_len[x.key], [response_len[t] for t in _responses(x.record)]
    return located


def _responses(record: Record) -> tuple[str, ...]:
    if isinstance(record, Demonstration):
        return (record.response,)
    if isinstance(record, Comparison):
        return record.responses
    return ()


def _fit(item: _Located, tokenizer, cfg: DataConfig, truncated: Tally) -> None:
    """Brings the record within the token limits (data.truncate) or raises why it cannot be."""
    record = item.record
    if cfg.truncate is Truncate.none:
        return _check_length(record, item.prompt_len, item.response_lens, cfg)
    too_long = [i for i, n in enumerate(item.response_lens) if n > cfg.max_response_tokens]
    if too_long:
        if not isinstance(record, Comparison):
            raise Dropped("response", f"over-long: {item.response_lens[0]} tokens > data.max_response_tokens="
                          f"{cfg.max_response_tokens}", "response_too_long")
        keep = [i for i in range(record.k) if i not in too_long]
        if len(keep) < 2 or len({record.ranks[i] for i in keep}) < 2:
            raise Dropped("responses", f"{len(too_long)} of {record.k} over data.max_response_tokens="
                          f"{cfg.max_response_tokens}, too few left to compare", "response_too_long")
        ranks = sorted({record.ranks[i] for i in keep})
        record = dataclasses.replace(record, responses=tuple(record.responses[i] for i in keep),
                                     ranks=tuple(ranks.index(record.ranks[i]) for i in keep))
        item.response_lens = [item.response_lens[i] for i in keep]
        for _ in too_long:
            truncated.add("response_dropped_from_ranking", item.location, item.source)
    if item.prompt_len > cfg.max_prompt_tokens and getattr(record, "constraints", None) is not None:
        raise Dropped("prompt", f"over-long: {item.prompt_len} tokens > data.max_prompt_tokens={cfg.max_prompt_tokens}, "
                      "and shortening it would cut its instructions", "prompt_too_long")
    if item.prompt_len > cfg.max_prompt_tokens:
        fitted = truncate_prompt(tokenizer, record.prompt, cfg.max_prompt_tokens)
        if fitted is None:
            raise Dropped("prompt", f"over-long: {item.prompt_len} tokens > data.max_prompt_tokens="
                          f"{cfg.max_prompt_tokens}, and its system message alone does not fit", "prompt_too_long")
        prompt, how, item.prompt_len = fitted
        record = dataclasses.replace(record, prompt=prompt)
        truncated.add(how, item.location, item.source)
    item.record = record


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
