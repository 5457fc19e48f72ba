"""Reward sources: what stage 3 optimises, what best-of-n picks by (compare's bon:<n>, bon_sft).

    ModelReward     a reward model, normalised as the RM stage saved it (demonstrations score 0)
    FunctionReward  a Python callable (prompt, response) -> float: the toy task's gold scorer,
                    an exact-match check; no model, no tokens, no normalisation
    EnsembleReward  several reward models, each put on a common scale first (mean 0 and the
                    members' mean std on the demonstrations), combined as their mean or as
                    mean - lambda * std across members (Coste et al. 2023, "Reward Model
                    Ensembles Help Mitigate Overoptimization": the uncertainty-weighted objective)
    VerifierReward  the checks of each prompt's verifiable instructions (data=ifeval): all or
                    nothing, or the share of instructions followed; strict or loose
    WeightedSum     weighted terms added up (reward.weight x the source + reward.add: e.g. an RM
                    plus a format check)

Each scores decoded text (`score_texts`) and, in stage 3's rollout, the policy's own token
sequences (`score_sequences`: a reward model reads the tokens it was sampled as, with no
re-tokenization; a function reads the text). Both return [B] float tensors.

The sources are registered by the name `reward.source` gives (`SOURCES`): a new kind is one
class here (or in any module imported before the config is checked), decorated
`@register_reward_source("<name>")`, and one `conf/reward/<name>.yaml`; the config check, the
manifest's record and compare's labels need nothing else.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Callable, Optional, Sequence

import torch

from rlhf.algos.registry import Registry
from rlhf.config import ConfigError
from rlhf.core.distributed import module_of
from rlhf.core.ops import positions
from rlhf.data.records import PromptLike
from rlhf.models import unwrap
from rlhf.models.reward import REWARD_NORM_KEY, reward_bias
from rlhf.sampling.prefix import prompt_once
from rlhf.sampling.score import score


SOURCES = Registry("reward.source")  # name -> the RewardSource class


def register_reward_source(name: str):
    """Class decorator: `reward.source=<name>` builds this class (its `build`), the config check
    asks its `problems`, and its records carry `source: <name>`."""
    def add(cls):
        cls.name = name
        return SOURCES.register(name)(cls)
    return add


class RewardSource:
    """What every source answers. `name` is set by its registration."""
    name = "?"

    @classmethod
    def build(cls, rc, load_model: Callable, tokenizer, paths: dict[str, str], gold) -> "RewardSource":
        """The source from the `reward` settings `rc`, the reward models' `paths` by role (loaded
        with `load_model`) and the data's gold scorer."""
        raise NotImplementedError

    @staticmethod
    def problems(rc, data) -> list[str]:
        """The config check's rules for this source: `rc` the reward settings, `data` the data's."""
        return []

    def models(self) -> list["ModelReward"]:
        return []  # the reward models it holds (ZeRO-3 shards them)

    def describe(self) -> dict:
        """The structured record (manifests; compare reads `source`)."""
        return {"source": self.name, **self.settings()}

    def settings(self) -> dict:
        return {}

    def label(self) -> str:
        """How compare's tables name it beside the algorithm ("grpo, RM")."""
        return self.name

    def score_texts(self, prompts: Sequence[PromptLike], responses: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def score_sequences(self, sequences, attention_mask, prompts, texts, chunk_rows: int, prompt_len: int = 0,
                        n: int = 1) -> torch.Tensor:
        """By default from the decoded texts with their prompts (a model reads the tokens instead).
        `prompt_len` and `n`: the first prompt_len columns come in runs of n equal prompts (a
        model then reads each prompt once; 0: not known)."""
        if prompts is None:
            raise ValueError(f"reward.source={self.name} scores (prompt, response) texts: pass the prompts to rollout()")
        return self.score_texts(prompts, texts).to(sequences.device)


def _config_of(model):
    """The Hugging Face config of a model, a DeepSpeed engine around one, or a peft wrapper."""
    return module_of(model).config


@register_reward_source("model")
class ModelReward(RewardSource):
    """A reward model as a reward source; `model` may be replaced by a DeepSpeed inference
    engine around it (stage 3 under ZeRO-3 does, rlhf.stages.online_rl.roles)."""

    @classmethod
    def build(cls, rc, load_model, tokenizer, paths, gold) -> "ModelReward":
        return cls(load_model(paths["reward_from"]), tokenizer, paths["reward_from"])

    def __init__(self, model, tokenizer, path: str, scale: float = 1.0):
        self.model, self.tokenizer, self.path = model, tokenizer, path
        self.scale = scale  # an ensemble member's factor to the common scale (EnsembleReward)

    @property
    def bias(self) -> float:
        return reward_bias(module_of(self.model))

    @property
    def raw_std(self) -> Optional[float]:
        """The std of the raw scores of the demonstrations, as the RM stage measured it."""
        return (getattr(_config_of(self.model), REWARD_NORM_KEY, None) or {}).get("raw_std")

    def models(self) -> list["ModelReward"]:
        return [self]

    def settings(self) -> dict:
        return {"model": self.path}

    def label(self) -> str:
        return "RM"

    def score_texts(self, prompts: Sequence[PromptLike], responses: Sequence[str]) -> torch.Tensor:
        return score(self.model, self.tokenizer, prompts, responses) * self.scale

    @torch.no_grad()
    def score_sequences(self, sequences: torch.Tensor, attention_mask: torch.Tensor, prompts, texts,
                        chunk_rows: int, prompt_len: int = 0, n: int = 1) -> torch.Tensor:
        """The RM reads the last non-pad token, as a transformers sequence classifier does: the
        EOS of an ended response. In chunks of `chunk_rows` (under ZeRO-3 each forward is a
        collective: every rank runs as many), each prompt read once when `prompt_len` is given."""
        raw = [self._raw(seq, att, prompt_len, n)
               for seq, att in zip(sequences.split(chunk_rows), attention_mask.split(chunk_rows))]
        return (torch.cat(raw) + self.bias) * self.scale

    def _raw(self, seq: torch.Tensor, att: torch.Tensor, prompt_len: int, n: int) -> torch.Tensor:
        model = unwrap(module_of(self.model))  # with LoRA: the adapters stay active, the score head is peft's copy
        if prompt_len and hasattr(model, "score"):
            pad_id = model.config.get_text_config().pad_token_id
            columns = torch.arange(seq.shape[1], device=seq.device)
            last = (columns * (seq != pad_id)).argmax(-1) if pad_id is not None else columns[-1:].expand(len(seq))
            if (last >= prompt_len - 1).all():  # (else an answer of pad tokens only: read in the prompt)
                hidden = prompt_once(getattr(model, model.base_model_prefix), seq, att, prompt_len, n, hidden=True)
                return model.score(hidden[torch.arange(len(seq), device=seq.device), last - (prompt_len - 1)])[:, 0].float()
        return self.model(input_ids=seq, attention_mask=att, position_ids=positions(att),
                          use_cache=False).logits[:, 0].float()


CALLABLE_NAME = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"  # package.module:name


@register_reward_source("function")
class FunctionReward(RewardSource):
    """A reward source that is a Python callable (prompt, response) -> float, named
    `package.module:name`. A callable that raises or returns a non-finite number stops the run,
    naming the prompt and the response."""

    @classmethod
    def build(cls, rc, load_model, tokenizer, paths, gold) -> "FunctionReward":
        return cls(rc.function)

    @staticmethod
    def problems(rc, data) -> list[str]:
        if re.fullmatch(CALLABLE_NAME, rc.function or ""):
            return []
        return [f"reward.function={rc.function!r}: with reward.source=function name a callable as "
                "package.module:name, e.g. reward.function=rlhf.data.toy:gold_score"]

    def __init__(self, spec: str, setting: str = "reward.function"):
        module, _, name = spec.partition(":")
        try:
            self.fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"{setting}={spec!r}: cannot load it ({e}); give package.module:name of a "
                              "callable (prompt, response) -> float on the Python path") from e
        if not callable(self.fn):
            raise ConfigError(f"{setting}={spec!r} is not callable")
        self.spec, self.setting = spec, setting

    def settings(self) -> dict:
        return {"function": self.spec}

    def label(self) -> str:
        return self.spec

    def score_texts(self, prompts: Sequence[PromptLike], responses: Sequence[str]) -> torch.Tensor:
        scores = []
        for prompt, response in zip(prompts, responses):
            try:
                value = float(self.fn(prompt, response))
            except Exception as e:  # the user's code: any failure stops the run, naming the input
                raise ConfigError(f"{self.setting}={self.spec} raised {type(e).__name__}: {e} on prompt "
                                  f"{prompt!r}, response {response!r}") from e
            if not math.isfinite(value):
                raise ConfigError(f"{self.setting}={self.spec} returned {value} on prompt {prompt!r}, response "
                                  f"{response!r}: a reward must be a finite number")
            scores.append(value)
        return torch.tensor(scores)


@register_reward_source("verifier")
class VerifierReward(RewardSource):
    """The prompts' own instruction checks as the reward: `credit` all gives 1 when the answer
    follows every instruction (IFEval's prompt-level accuracy), fraction the share it follows;
    `check` strict reads the answer as written, loose as IFEval's loose reading. `gold` is the
    data's gold scorer (rlhf.data.instructions.InstructionGold), which knows each prompt's
    instructions."""

    @classmethod
    def build(cls, rc, load_model, tokenizer, paths, gold) -> "VerifierReward":
        return cls(gold, rc.check, rc.credit)

    @staticmethod
    def problems(rc, data) -> list[str]:
        formats = {src.format.value for src in (data, *data.sources)}
        if formats == {"ifeval"}:
            return []
        return ["reward.source=verifier checks the instructions each prompt carries: it needs data=ifeval "
                f"(prompts with verifiable instructions) for every source, not {', '.join(sorted(formats))}"]

    def __init__(self, gold, check: str = "strict", credit: str = "all"):
        if not hasattr(gold, "verdict"):
            raise ConfigError("reward.source=verifier: the data's prompts carry no verifiable instructions; "
                              "use data=ifeval (a file in IFEval's layout: prompt, instruction_id_list, kwargs)")
        self.gold, self.check, self.credit = gold, check, credit

    def settings(self) -> dict:
        return {"verifier": f"{self.check}, {self.credit}"}

    def label(self) -> str:
        return f"verifier ({self.check}, {self.credit})"

    def score_texts(self, prompts: Sequence[PromptLike], responses: Sequence[str]) -> torch.Tensor:
        scores = []
        for prompt, response in zip(prompts, responses):
            followed = getattr(self.gold.verdict(prompt, response), self.check)
            scores.append(float(all(followed)) if self.credit == "all" else sum(followed) / len(followed))
        return torch.tensor(scores)


def combine_members(scores: torch.Tensor, combine: str, std_coef: float) -> torch.Tensor:
    """[members, B] -> [B]: the mean, or mean - std_coef * std (the members' sample std)."""
    mean = scores.mean(0)
    if combine == "mean":
        return mean
    return mean - std_coef * scores.std(0, unbiased=True)


@register_reward_source("ensemble")
class EnsembleReward(RewardSource):
    """Several reward models as one source. Each member is normalised first: its saved bias
    (demonstrations mean 0), and a factor putting its demonstration std at the members' mean, so
    no member dominates by scale and the ensemble's scale stays an RM's (beta, no_eos_score and
    score_clip keep their meaning)."""

    COMBINES = ("mean", "mean_minus_std")

    @classmethod
    def build(cls, rc, load_model, tokenizer, paths, gold) -> "EnsembleReward":
        members = [paths[k] for k in sorted((k for k in paths if k.startswith("member_")), key=lambda k: int(k[7:]))]
        return cls([ModelReward(load_model(p), tokenizer, p) for p in members], rc.combine, rc.std_coef)

    @staticmethod
    def problems(rc, data) -> list[str]:
        if len(rc.members) != 1:
            return []
        return [f"reward.members={list(rc.members)}: an ensemble needs at least 2 reward models "
                "(or leave it empty for every rm and rm@* of the run)"]

    def __init__(self, members: list[ModelReward], combine: str = "mean", std_coef: float = 1.0):
        if len(members) < 2:
            raise ConfigError(f"reward.source=ensemble needs at least 2 reward models, got {len(members)}")
        stds = [m.raw_std for m in members]
        if all(s is not None and s > 0 for s in stds):
            common = sum(stds) / len(stds)
            for m, s in zip(members, stds):
                m.scale = common / s
        self.members, self.combine, self.std_coef = members, combine, std_coef

    def models(self) -> list[ModelReward]:
        return list(self.members)

    def settings(self) -> dict:
        return {"ensemble": [m.path for m in self.members], "combine": self.combine,
                **({"std_coef": self.std_coef} if self.combine == "mean_minus_std" else {})}

    def label(self) -> str:
        how = "mean" if self.combine == "mean" else f"mean - {self.std_coef:g} std"
        return f"ensemble of {len(self.members)} ({how})"

    def member_scores_texts(self, prompts, responses) -> torch.Tensor:
        return torch.stack([m.score_texts(prompts, responses) for m in self.members])

    def score_texts(self, prompts, responses) -> torch.Tensor:
        return combine_members(self.member_scores_texts(prompts, responses), self.combine, self.std_coef)

    def score_sequences(self, sequences, attention_mask, prompts, texts, chunk_rows: int, prompt_len: int = 0,
                        n: int = 1) -> torch.Tensor:
        scores = torch.stack([m.score_sequences(sequences, attention_mask, prompts, texts, chunk_rows, prompt_len, n)
                              for m in self.members])
        return combine_members(scores, self.combine, self.std_coef)


class WeightedSum(RewardSource):
    """sum_i weight_i x source_i (reward.weight and reward.add: not a `reward.source` of its own)."""
    name = "sum"

    def __init__(self, terms: list[tuple[float, object]]):
        self.terms = terms

    def models(self) -> list[ModelReward]:
        return [m for _, source in self.terms for m in source.models()]

    def settings(self) -> dict:
        return {"sum": [{"weight": w, **source.describe()} for w, source in self.terms]}

    def label(self) -> str:
        return " + ".join(f"{w:g} x {source.label()}" for w, source in self.terms)

    def score_texts(self, prompts, responses) -> torch.Tensor:
        return sum(w * source.score_texts(prompts, responses) for w, source in self.terms)

    def score_sequences(self, sequences, attention_mask, prompts, texts, chunk_rows: int, prompt_len: int = 0,
                        n: int = 1) -> torch.Tensor:
        return sum(w * source.score_sequences(sequences, attention_mask, prompts, texts, chunk_rows, prompt_len, n)
                   for w, source in self.terms)


def build_reward(rc, load_model: Callable[[str], torch.nn.Module], tokenizer, paths: dict[str, str], gold=None):
    """The reward source `rc` (a RewardConfig) describes. `paths`: the reward models by role,
    as rlhf.stages.reward_models resolves them ("reward_from" for source=model, "member_<i>" for
    an ensemble's, "add_<i>" for an added term's model); `load_model` loads one (eval mode).
    `gold`: the data's gold scorer (source=verifier checks the instructions it knows)."""
    main = SOURCES[rc.source].build(rc, load_model, tokenizer, paths, gold)
    if rc.weight == 1.0 and not rc.add:
        return main
    terms: list[tuple[float, object]] = [(rc.weight, main)]
    for i, term in enumerate(rc.add):
        if term.function:
            terms.append((term.weight, FunctionReward(term.function, f"reward.add[{i}].function")))
        else:
            terms.append((term.weight, ModelReward(load_model(paths[f"add_{i}"]), tokenizer, paths[f"add_{i}"])))
    return WeightedSum(terms)


def reward_scores(reward, tokenizer, prompts: Sequence[PromptLike], responses: Sequence[str]) -> torch.Tensor:
    """Scores from any reward source, or from a bare reward model (normalised)."""
    if hasattr(reward, "score_texts"):
        return reward.score_texts(prompts, responses)
    return score(reward, tokenizer, prompts, responses)
