"""`rlhf stage=generate`: print a policy's answers, formatted as every stage formats prompts.

    rlhf stage=generate generate.prompt="sort ascending: 3 1 2"
    rlhf stage=generate generate.policy=runs/default/sft/final generate.prompts_file=prompts.txt
    rlhf stage=generate                     # interactive: one prompt per line, Ctrl-D ends

The quickest way to look at what a stage produced. The policy defaults to the last policy this
run wrote (in pipeline order: PPO, else SFT), else the configured base model.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rlhf.config import ConfigError, RLHFConfig
from rlhf.core.artifacts import StageRun
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.sampling import generate
from rlhf.stages import latest_policy

log = logging.getLogger(__name__)


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    g = cfg.generate
    policy_from = g.policy or latest_policy(cfg)
    tokenizer = load_tokenizer(cfg.model)
    policy = load_causal_lm(cfg.model, tokenizer, policy_from).eval()
    max_new_tokens = g.max_new_tokens or cfg.data.max_response_tokens
    stage_run.manifest["inputs"] = {"policy": policy_from}
    log.info("policy: %s (%s, %d answer(s) per prompt)", policy_from,
             "greedy" if g.greedy else f"sampled at temperature {g.temperature}", g.num_samples)

    def answer(prompts: list[str]) -> None:
        for n in range(g.num_samples):
            samples = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=g.greedy,
                               temperature=g.temperature, seed=cfg.seed + n)
            for s in samples:
                suffix = "" if s.ended else f"  [no EOS within {max_new_tokens} tokens]"
                print(f"> {s.prompt}\n{s.text}{suffix}\n", flush=True)
        stage_run.metrics["prompts"] = stage_run.metrics.get("prompts", 0) + len(prompts)

    if g.prompt is not None:
        answer([g.prompt])
    elif g.prompts_file is not None:
        path = Path(g.prompts_file)
        if not path.is_file():
            raise ConfigError(f"generate.prompts_file={path}: no such file (one prompt per line)")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"generate.prompts_file={path} has no prompts (one prompt per line, blank lines skipped)")
        answer(prompts)
    else:
        if sys.stdin.isatty():
            print("Type a prompt and press Enter; Ctrl-D ends.", flush=True)
        for line in sys.stdin:
            if line.strip():
                answer([line.strip()])
