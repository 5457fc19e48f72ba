"""`rlhf stage=generate`: print a policy's answers, formatted as every stage formats prompts.

    rlhf stage=generate generate.prompt="sort ascending: 3 1 2"
    rlhf stage=generate generate.policy=runs/default/sft/final generate.prompts_file=prompts.txt
    rlhf stage=generate                     # interactive: one prompt per line, Ctrl-D ends

The quickest way to look at what a stage produced. The policy defaults to the last policy this
run wrote (in pipeline order: bon_sft, dpo, ppo, sft), else the configured base model. It decodes
as the model's generation_config.json says (greedy unless it samples), as transformers'
`generate()` does, unless generate.greedy / generate.temperature say otherwise.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rlhf.config import ConfigError, RLHFConfig
from rlhf.core.artifacts import StageRun
from rlhf.core.distributed import device
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.sampling import generate
from rlhf.stages import latest_policy

log = logging.getLogger(__name__)


def run(cfg: RLHFConfig, stage_run: StageRun) -> None:
    g = cfg.generate
    policy_from = g.policy or latest_policy(cfg)
    tokenizer = load_tokenizer(cfg.model)
    policy = load_causal_lm(cfg.model, tokenizer, policy_from).to(device()).eval()
    greedy, temperature, max_new_tokens = settings(cfg, policy.generation_config)
    stage_run.manifest["inputs"] = {"policy": policy_from}
    stage_run.manifest["settings"] = {"greedy": greedy, "temperature": temperature, "max_new_tokens": max_new_tokens}
    log.info("policy: %s (%s, at most %d new tokens, %d answer(s) per prompt)", policy_from,
             "greedy" if greedy else f"sampled at temperature {temperature}", max_new_tokens, g.num_samples)

    def answer(prompts: list[str]) -> None:
        for n in range(g.num_samples):
            samples = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=greedy,
                               temperature=temperature, seed=cfg.seed + n)
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


DEFAULT_MAX_NEW_TOKENS = 256  # a pretrained model's answer on a config whose data is the toy task's


def settings(cfg: RLHFConfig, generation_config) -> tuple[bool, float, int]:
    """(greedy, temperature, max_new_tokens): generate.* where set, else what the model's own
    generation config says, as `model.generate()` would decode (schema.py has the rules)."""
    g = cfg.generate
    samples = bool(getattr(generation_config, "do_sample", False))
    greedy = g.greedy if g.greedy is not None else not samples
    temperature = g.temperature or (getattr(generation_config, "temperature", None) if samples else None) or 1.0
    toy_on_other_model = cfg.data.format.value == "toy" and cfg.model.name_or_path is not None
    max_new_tokens = (g.max_new_tokens or getattr(generation_config, "max_new_tokens", None)
                      or (DEFAULT_MAX_NEW_TOKENS if toy_on_other_model else cfg.data.max_response_tokens))
    return greedy, float(temperature), int(max_new_tokens)
