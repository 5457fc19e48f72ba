"""The data layer's configs (`data.` and each of `data.sources`): formats, field names, splits,
the toy task, OpenAssistant trees, truncation. Part of the schema (rlhf/config/schema.py, which
re-exports every name here); apart from it because the data layer has as many options as all
the stages together.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional

SPLITS = ("sft", "rm", "ppo", "eval")


class DataFormat(enum.Enum):
    """How the rows of a data source map onto records (see data/README.md for each format)."""

    toy = "toy"  # the built-in generator; no file
    demonstration = "demonstration"  # prompt, response -> Demonstration
    messages = "messages"  # chat messages ending in an assistant turn -> Demonstration
    pairwise = "pairwise"  # prompt, chosen, rejected (+ margin) -> Comparison with K=2
    ranked = "ranked"  # prompt, responses ranked best-first (OASST-style) -> K-wise Comparison
    hh_rlhf = "hh_rlhf"  # Anthropic HH-RLHF chosen/rejected transcripts -> Comparison
    oasst = "oasst"  # OpenAssistant message trees (one message a row) -> K-wise Comparisons of ranked replies
    prompt = "prompt"  # prompt only -> Prompt (PPO / eval prompts)
    ifeval = "ifeval"  # prompt + verifiable instructions (IFEval's layout) -> Prompt whose gold is the instructions' checks


class MultiLabel(enum.Enum):
    """How a prompt that several labellers ranked (`labels` in a file `rlhf-rank --web` exported)
    becomes training data."""

    mean_rank = "mean_rank"  # one comparison, ranked by the labellers' mean rank (the file's `rank`s)
    each = "each"  # one comparison per labeller's ranking (agreement weighs in by repetition)


# What to do with a bad record. raise: stop at the first one with an error naming it;
# skip: drop bad records, count them by reason and report the counts. (Built with the functional
# API because OmegaConf matches enum *names* and `raise` is a Python keyword.)
OnError = enum.Enum("OnError", {"raise": "raise", "skip": "skip"})


@dataclass
class FieldMap:
    """Column names in the source rows (`data.fields.prompt=question` for a dataset that calls
    its prompt column `question`). Dotted names reach into nested objects (`meta.question`)."""

    prompt: str = "prompt"
    response: str = "response"
    chosen: str = "chosen"
    rejected: str = "rejected"
    margin: str = "margin"  # optional column; absent or null means no margin
    responses: str = "responses"  # ranked format: list of strings best-first, or of objects
    response_text: str = "text"  # ranked format, object elements: the text key
    response_rank: str = "rank"  # ranked format, object elements: rank key (0 = best; equal = tie)
    messages: str = "messages"  # messages format
    message_id: str = "message_id"  # oasst format: the message's id, its parent's, and its author
    parent_id: str = "parent_id"
    role: str = "role"  # "prompter" or "assistant"
    labels: str = "labels"  # ranked format: each labeller's ranking ({labeller, ranks}), from rlhf-rank --web
    instruction_ids: str = "instruction_id_list"  # ifeval format: the instructions' ids (keywords:existence, ...)
    instruction_kwargs: str = "kwargs"  # ifeval format: one object of arguments per instruction id


@dataclass
class SplitConfig:
    """Fractions of prompts per split, assigned by a hash of the prompt (not its position), so a
    prompt lands in the same split on every run, rank and machine."""

    sft: float = 0.4
    rm: float = 0.3
    ppo: float = 0.2
    eval: float = 0.1
    salt: str = "rlhf-v1"  # changing it reshuffles every prompt; keep it fixed across stages
    # Splits listed here get the same prompts (e.g. [sft, rm] trains SFT and RM on one set of
    # prompts, as many public recipes do); their fractions must be equal. Empty: no prompt lands
    # in two splits.
    shared: List[str] = field(default_factory=list)


@dataclass
class ToyConfig:
    """The built-in task (data/README.md): sort a short list of digits as instructed."""

    seed: int = 0
    num_prompts: int = 12000
    tasks: List[str] = field(default_factory=lambda: ["ascending", "descending"])  # or "reverse"
    min_items: int = 3
    max_items: int = 6
    flawed_fraction: float = 0.3  # share of demonstrations with one deliberate flaw
    # The demonstrator, apart from the labeller (InstructGPT's premise: people rank answers
    # better than they write them): which flaw kinds its flawed demonstrations carry (swap,
    # drop_last, extra_item), and how: random = a kind drawn each time and placed at random (noise
    # SFT averages away: its greedy answer stays right); systematic = always the first listed
    # kind that applies, in the same place (a habit SFT learns, so its greedy answer inherits it)
    demo_flaws: List[str] = field(default_factory=lambda: ["swap", "drop_last", "extra_item"])
    demo_flaw_mode: str = "random"
    responses_per_comparison: int = 4  # K of each K-wise comparison
    label_noise: float = 0.1  # chance that a comparison's ranking has one adjacent pair swapped


@dataclass
class OasstConfig:
    """Which OpenAssistant messages are read (format oasst, flat rows or release trees); a
    message left out takes its replies with it. Counted in the summary as oasst_<field>."""

    languages: List[str] = field(default_factory=list)  # e.g. [en, de]; empty = every language
    drop_deleted: bool = True  # messages their authors or moderators deleted
    require_review: bool = True  # leave out messages whose review failed (review_result false)
    drop_synthetic: bool = True  # messages written by a model, not a person


@dataclass
class SourceConfig:
    """Where records come from and how a row maps onto them. `data` itself is the main source;
    `data.sources` lists more, each with these keys."""

    name: str = "toy"  # label used in manifests and per-source counts and accuracies
    format: DataFormat = DataFormat.toy
    # Where records come from: `path` (a local jsonl/json/parquet/csv file, .gz allowed, or a
    # folder of such files) or `hub_id` (datasets.load_dataset). `path` wins when both are set
    # so that a hub dataset config can be pointed at a local copy with data.path=...
    path: Optional[str] = None
    hub_id: Optional[str] = None
    hub_name: Optional[str] = None  # the dataset's config name (load_dataset's `name`)
    hub_data_dir: Optional[str] = None  # a folder inside the dataset repo (HH: harmless-base)
    hub_split: str = "train"
    hub_revision: Optional[str] = None
    fields: FieldMap = field(default_factory=FieldMap)
    # Text encoding of local files (jsonl, json, csv). A UTF-8 byte-order mark is accepted either
    # way; other encodings by name (latin-1, cp1252, utf-16, ...: Python's codec names).
    encoding: str = "utf-8"
    max_records: Optional[int] = None  # read at most this many rows (quick trials); null = all
    # Weight of this source's records: 2 keeps each record twice, 0.5 about half of them (chosen
    # by a hash of the prompt, so the same half on every run); 1 = as read.
    weight: float = 1.0
    multi_label: MultiLabel = MultiLabel.mean_rank  # ranked format: prompts ranked by several labellers
    # One split (sft, rm, ppo or eval) that takes every prompt of this source, instead of the
    # prompt hash's share (data.splits): a test set that no training stage reads is `split: eval`.
    split: Optional[str] = None
    oasst: OasstConfig = field(default_factory=OasstConfig)


class Truncate(enum.Enum):
    """What happens to a record longer than data.max_prompt_tokens / max_response_tokens."""

    # prompts keep their most recent turns (whole turns dropped from the left; a single
    # over-long turn cut from the left), the system message kept; an over-long response is
    # dropped from its record (a ranking keeps its other responses while two or more remain)
    turns = "turns"
    none = "none"  # the whole record is a bad record (prompt_too_long / response_too_long)


@dataclass
class DataConfig(SourceConfig):
    # More sources read beside the main one above (not the toy format), each a mapping with
    # the keys of SourceConfig, e.g. data.sources='[{name: mine, format: ranked, path: c.jsonl}]'.
    # Their records are split by prompt hash like the main source's.
    sources: List[SourceConfig] = field(default_factory=list)
    on_error: OnError = OnError["raise"]
    # Comparisons also give their best (untied) response as a demonstration, so that preference
    # data alone can feed SFT ("SFT on chosen"). Off for data that has its own demonstrations.
    demonstrations_from_comparisons: bool = False
    max_prompt_tokens: int = 256  # formatted prompt, chat template included
    max_response_tokens: int = 128  # response tokens including the closing EOS
    truncate: Truncate = Truncate.turns
    splits: SplitConfig = field(default_factory=SplitConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
