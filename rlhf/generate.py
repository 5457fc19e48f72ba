"""`rlhf stage=generate`: print a policy's answers, formatted as every stage formats prompts.

    rlhf stage=generate generate.prompt="sort ascending: 3 1 2"
    rlhf stage=generate generate.policy=runs/default/sft/final generate.prompts_file=prompts.txt
    rlhf stage=generate                     # interactive: one prompt per line, Ctrl-D ends

The quickest way to look at what a stage produced. The policy defaults to this run's PPO
policy, else its SFT policy, else the configured base model.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rlhf.artifacts import StageRun
from rlhf.config import ConfigError, RLHFConfig
from rlhf.generation import generate
from rlhf.models import load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)


def run(cfg: RLHFConfig, run: StageRun) -> None:
    g = cfg.generate
    policy_from = g.policy or _latest_policy(cfg)
    tokenizer = load_tokenizer(cfg.model)
    policy = load_causal_lm(cfg.model, tokenizer, policy_from).eval()
    max_new_tokens = g.max_new_tokens or cfg.data.max_response_tokens
    run.manifest["inputs"] = {"policy": policy_from}
    log.info("policy: %s (%s, %d answer(s) per prompt)", policy_from,
             "greedy" if g.greedy else f"sampled at temperature {g.temperature}", g.num_samples)

    def answer(prompts: list[str]) -> None:
        for n in range(g.num_samples):
            samples = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=g.greedy,
                               temperature=g.temperature, seed=cfg.seed + n)
            for s in samples:
                suffix = "" if s.ended else f"  [no EOS within {max_new_tokens} tokens]"
                print(f"> {s.prompt}\n{s.text}{suffix}\n", flush=True)
        run.metrics["prompts"] = run.metrics.get("prompts", 0) + len(prompts)

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


def _latest_policy(cfg: RLHFConfig) -> str:
    for stage in ("ppo", "sft"):
        if (cfg.run_dir / stage / "final").exists():
            return str(cfg.run_dir / stage / "final")
    if cfg.model.name_or_path:
        return cfg.model.name_or_path  # the base model, before any stage ran
    raise ConfigError(f"generate.policy is null and run {cfg.run!r} has no ppo/final or sft/final in {cfg.run_dir}: "
                      f"set generate.policy=<folder or hub id>, or train with `rlhf stage=sft run={cfg.run}`")
