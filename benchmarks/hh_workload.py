"""`--workload hh` of the stage-3 throughput benchmarks, ours (workload.py) and the peers'
(peers/): prompts and answers as long as Anthropic HH-RLHF's, measured in SmolLM2 tokens by
hh_lengths.py into hh_lengths.json (the only thing read at run time).

Prompts are random token ids, as in the synthetic workload, of lengths drawn from the data's
and cut at --prompt-len. The models have random weights and never end an answer on their own,
so the policy is an `EosByLength`, which ends answers at lengths distributed as the data's (cut
at --response-len, without EOS) by one deterministic rule on the logits it decodes with: the
same rule, hence the same answer lengths, in our sampler and in transformers' `generate`.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

LENGTHS = Path(__file__).with_name("hh_lengths.json")
# the medium benchmark model, 64 episodes per update and room for the data's lengths;
# flags given on the command line still win
DEFAULTS = {"vocab": 4096, "hidden": 256, "intermediate": 688, "layers": 4, "batch": 64, "updates": 2,
            "prompt_len": 192, "response_len": 128}
TABLE_SEED = 1234  # the uniforms U[t, x] of the EOS rule: one fixed table for every script and run


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """The flags of `p` and --workload, with hh's defaults when --workload hh is given."""
    p.add_argument("--workload", default="synthetic", choices=("synthetic", "hh"),
                   help="synthetic: prompts of exactly prompt-len, answers of exactly response-len (EOS held back); "
                        "hh: HH-RLHF's prompt lengths up to prompt-len and answer lengths up to response-len, on "
                        f"other defaults: {DEFAULTS}")
    if p.parse_known_args()[0].workload == "hh":
        p.set_defaults(**DEFAULTS)
    return p.parse_args()


def measured_lengths(name: str) -> torch.Tensor:
    """Every measured length of hh_lengths.json's histogram `name`, sorted."""
    pairs = torch.tensor(json.loads(LENGTHS.read_text())[name])
    return pairs[:, 0].repeat_interleave(pairs[:, 1])


def prompts(n: int, vocab: int, cap: int, seed: int) -> list[list[int]]:
    """n prompts of random ids (2 .. vocab - 1), their lengths drawn from the data's and cut at
    `cap`; the same for a seed in every script."""
    g = torch.Generator().manual_seed(seed)
    lengths = measured_lengths("prompt_histogram")
    drawn = lengths[torch.randint(len(lengths), (n,), generator=g)].clamp(max=cap)
    ids = torch.randint(2, vocab, (int(drawn.sum()),), generator=g)
    return [row.tolist() for row in ids.split(drawn.tolist())]


def hazard(cap: int) -> torch.Tensor:
    """[cap] h(t) = P(L = t + 1 | L > t) for the data's answer lengths L (EOS included): the
    chance that an answer still going at step t ends there. Longer answers than cap never end."""
    lengths = measured_lengths("answer_histogram")
    ends = torch.bincount(lengths - 1, minlength=cap)[:cap].double()
    going = len(lengths) - ends.cumsum(0) + ends
    return ends / going.clamp(min=1)


class EosByLength(LlamaForCausalLM):
    """A Llama that ends its sampled answers at the data's lengths. When decoding (a call with a
    cache, without gradients), the logits of the last position predict answer token t after
    token x (the last input): EOS is made certain there if U[t, x] < h(t), impossible otherwise.
    U is a fixed table of uniforms, h the hazard; sampled tokens being near uniform, an answer
    going at t ends there with probability ~h(t). Other calls are left as they are: those
    without a cache (scoring, training) and training passes that prefill a prompt's cache for
    its group (rlhf.sampling.prefix). t comes from the cache's length alone, so the rule holds
    whatever rows a sampler drops from its batch or copies a prefilled prompt's cache to."""

    def end_like_hh(self, cap: int, eos_id: int) -> "EosByLength":
        """Sets the rule for answers of up to `cap` tokens; returns the model."""
        uniforms = torch.rand(cap, self.config.vocab_size, generator=torch.Generator().manual_seed(TABLE_SEED))
        self.ends = uniforms < hazard(cap)[:, None]  # [t, x]: EOS after x at step t
        self.eos_id = eos_id
        return self

    @functools.wraps(LlamaForCausalLM.forward)  # its signature, which callers inspect (logits_to_keep, cache)
    def forward(self, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 takes either name
        filled = cache.get_seq_length() if cache is not None and not torch.is_grad_enabled() else None
        out = super().forward(*args, **kwargs)
        if filled is None:
            return out
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        step = self._answer_step(filled, ids.shape[1])
        if step is not None:
            self._decide_eos(out.logits[:, -1], step, ids[:, -1])
        return out

    def _answer_step(self, filled: int, width: int) -> int | None:
        """The answer token a decoding call predicts: 0 after the prefill (an empty cache), whose
        width is kept; then one per token. None for several tokens on a filled cache."""
        if filled == 0:
            self.prompt_width = width
            return 0
        return filled - self.prompt_width + 1 if width == 1 else None

    def _decide_eos(self, logits: torch.Tensor, step: int, last: torch.Tensor) -> None:
        """In place: EOS far above every other logit of a row, or -inf."""
        if self.ends.device != logits.device:
            self.ends = self.ends.to(logits.device)
        certain = logits.max(-1).values + 50  # e^-50: no other token is ever drawn
        logits[:, self.eos_id] = torch.where(self.ends[step, last], certain, float("-inf"))


def answer_lengths(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B] tokens of each answer up to and including its first EOS, all of them without one."""
    is_eos = responses == eos_id
    return torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, responses.shape[1])


def throughput(prompt_tokens: int, answer_tokens: int, answers: int, wall: float) -> dict:
    """The token figures every script reports under hh: real tokens, no padding."""
    return {"prompt_tokens": prompt_tokens, "answer_tokens": answer_tokens,
            "mean_answer_len": round(answer_tokens / answers, 1),
            "answer_tokens_per_s": round(answer_tokens / wall, 1),
            "tokens_per_s": round((prompt_tokens + answer_tokens) / wall, 1)}


def spread(lengths: torch.Tensor) -> dict:
    """The answers' median and 90th percentile length."""
    p50, p90 = torch.quantile(lengths.double(), torch.tensor([0.5, 0.9], dtype=torch.double)).tolist()
    return {"answer_len_p50": round(p50, 1), "answer_len_p90": round(p90, 1)}
