"""Extending stage 3 the way docs/development.md says: a reward source, or an advantage estimator,
is one Python module plus one conf file, and `rlhf stage=ppo reward=<name>` / `algo=<name>` then
runs it through the real loop. Each test writes the two files into a folder of its own (the
module on the Python path, the conf file on Hydra's search path) and changes nothing else."""

import importlib
import json
import sys
import textwrap

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from rlhf.algos.advantages import ADVANTAGES
from rlhf.checks import check, register_schemas, to_config
from rlhf.config import ModelConfig
from rlhf.core.artifacts import StageRun, save_final
from rlhf.models import build_tiny_model, load_tokenizer
from rlhf.sampling.reward import SOURCES
from tests.conftest import ROOT

register_schemas()

REWARD_MODULE = '''
import torch

from rlhf.sampling.reward import RewardSource, register_reward_source

SCORED = []  # every batch of scores it gave, for the test to read


@register_reward_source("test_length")
class LengthReward(RewardSource):
    """Longer answers score higher: one point per character."""

    @classmethod
    def build(cls, rc, load_model, tokenizer, paths, gold):
        return cls()

    def label(self):
        return "characters"

    def score_texts(self, prompts, responses):
        SCORED.append([float(len(r)) for r in responses])
        return torch.tensor(SCORED[-1])
'''

ADVANTAGE_MODULE = '''
import torch

from rlhf.algos.advantages import register_advantage

SEEN = []


@register_advantage("test_group_sign", needs_critic=False)
def group_sign(x, cfg):
    """Each response's advantage is the sign of its score against its group's mean."""
    SEEN.append(x)
    sums = torch.zeros(int(x.groups.max()) + 1).index_add(0, x.groups, x.scores)
    counts = torch.zeros_like(sums).index_add(0, x.groups, torch.ones_like(x.scores))
    return torch.sign(x.scores - (sums / counts)[x.groups])[:, None] * x.mask, None
'''


@pytest.fixture
def extension(tmp_path, monkeypatch):
    """Writes (module name, module source, conf group, conf name, conf text) as the two files and
    imports the module; the registries are restored afterwards."""
    monkeypatch.setattr(SOURCES, "_entries", dict(SOURCES._entries))
    monkeypatch.setattr(ADVANTAGES, "_entries", dict(ADVANTAGES._entries))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))

    def add(module: str, source: str, group: str, name: str, conf: str):
        (tmp_path / "code").mkdir(exist_ok=True)
        (tmp_path / "code" / f"{module}.py").write_text(source)
        (tmp_path / "conf" / group).mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / group / f"{name}.yaml").write_text(textwrap.dedent(conf))
        monkeypatch.delitem(sys.modules, module, raising=False)
        return importlib.import_module(module)

    yield add
    for module in ("test_length_reward", "test_sign_advantage"):
        sys.modules.pop(module, None)


def run_ppo(tmp_path, overrides: list[str]) -> dict:
    """`rlhf stage=ppo` composed from conf/ plus tmp_path/conf, on the toy with a tiny untrained
    policy; returns the stage's manifest."""
    from rlhf.stages.online_rl import loop

    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(0)
    save_final(build_tiny_model(ModelConfig(), tokenizer), tokenizer, tmp_path / "policy")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = to_config(compose(config_name="config", overrides=[
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "stage=ppo", f"runs_dir={tmp_path}", "run=r",
            "logger=none", "data.toy.num_prompts=300", f"ppo.policy_from={tmp_path / 'policy'}", "ppo.updates=1",
            "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8", "ppo.eval_prompts=4", "ppo.save_every_updates=0",
            *overrides]))
    check(cfg)
    with StageRun(cfg.stage_dir, OmegaConf.structured(cfg)) as stage_run:
        loop.run(cfg, stage_run)
    return json.loads((cfg.stage_dir / "manifest.json").read_text())


def test_a_reward_source_in_two_files_runs_through_the_real_loop(extension, tmp_path):
    module = extension("test_length_reward", REWARD_MODULE, "reward", "test_length", """\
        # @package _global_
        reward:
          source: test_length
        """)
    manifest = run_ppo(tmp_path, ["reward=test_length", "algo=grpo"])

    assert manifest["method"] == {"algorithm": "grpo", "reward": {"source": "test_length"},
                                  "label": "grpo, characters"}
    (scores,) = module.SCORED  # the one update's rollout, scored by the new source
    assert len(scores) == 8 and manifest["metrics"]["last_update"]["score_raw"] == pytest.approx(sum(scores) / 8)
    assert "reward" not in manifest["inputs"] and "reward_from" not in manifest["inputs"]  # no model to read


def test_an_advantage_estimator_in_two_files_runs_through_the_real_loop(extension, tmp_path):
    module = extension("test_sign_advantage", ADVANTAGE_MODULE, "algo", "test_sign", """\
        # @package ppo
        advantage: test_group_sign
        samples_per_prompt: 4
        kl_in_reward: false
        ppo_epochs: 1
        """)
    manifest = run_ppo(tmp_path, ["algo=test_sign", "reward=function", "reward.function=rlhf.data.toy:gold_score"])

    (x,) = module.SEEN  # called once, with four responses per prompt and no critic's values
    assert x.values is None and x.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert manifest["method"]["algorithm"] == "test_group_sign" and "value" not in manifest["distributed"]
    stats = manifest["metrics"]["last_update"]
    assert "policy_loss" in stats and "value_loss" not in stats and "explained_variance" not in stats
    stage = tmp_path / "r" / "ppo"
    assert (stage / "checkpoints" / "update_1" / "policy").is_dir() and not (stage / "checkpoints" / "update_1" / "value").exists()
    after = load_file(stage / "final" / "model.safetensors")
    before = load_file(tmp_path / "policy" / "model.safetensors")
    assert any(not torch.equal(after[k], before[k]) for k in before), "the policy did not change"
