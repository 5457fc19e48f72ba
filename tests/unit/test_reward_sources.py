"""Stage 3's reward from a Python function (reward=function / reward=toy_gold): loading, errors
that name the input, the rollout scoring decoded text, and no reward model read anywhere."""

import math

import pytest
import torch

from rlhf import lineage, stages
from rlhf.config import ConfigError, PPOStageConfig, RewardConfig, RLHFConfig
from rlhf.config.check import check
from rlhf.sampling import FunctionReward

CALLS = []


def length_reward(prompt, response):
    CALLS.append((prompt, response))
    return float(len(response))


def broken(prompt, response):
    raise ZeroDivisionError("boom")


def not_finite(prompt, response):
    return math.nan


def test_a_function_reward_scores_text_and_names_the_input_it_fails_on():
    gold = FunctionReward("rlhf.data.toy:gold_score")
    assert gold.score_texts(["sort ascending: 3 1 2", "sort ascending: 3 1 2"], [" 1 2 3", " 3 2 1"]).tolist()[0] == 1.0
    with pytest.raises(ConfigError, match="raised ZeroDivisionError: boom on prompt 'p1'"):
        FunctionReward(f"{__name__}:broken").score_texts(["p1"], ["r"])
    with pytest.raises(ConfigError, match="returned nan on prompt 'p2'.*finite"):
        FunctionReward(f"{__name__}:not_finite").score_texts(["p2"], ["r"])
    with pytest.raises(ConfigError, match="reward.function='no.such.module:f': cannot load it"):
        FunctionReward("no.such.module:f")


def test_reward_config_is_checked():
    with pytest.raises(ConfigError, match="reward.function=None: with reward.source=function name a callable"):
        check(RLHFConfig(reward=RewardConfig(source="function")))
    with pytest.raises(ConfigError, match="reward.source='oracle': choose model or function"):
        check(RLHFConfig(reward=RewardConfig(source="oracle")))
    check(RLHFConfig(reward=RewardConfig(source="function", function="rlhf.data.toy:gold_score")))


def test_with_a_function_stage_3_reads_no_reward_model_and_its_lineage_names_the_function(tmp_path):
    cfg = RLHFConfig(runs_dir=str(tmp_path), run="r",
                     reward=RewardConfig(source="function", function="rlhf.data.toy:gold_score"))
    found = stages.resolve_inputs(cfg, "ppo", require=False)
    assert "reward_from" not in found and found["value_from"] == found["policy_from"]  # the critic starts as the policy
    other = RLHFConfig(runs_dir=str(tmp_path), run="r",
                       reward=RewardConfig(source="function", function=f"{__name__}:length_reward"))
    assert lineage.fingerprint(cfg, "ppo")["sha256"] != lineage.fingerprint(other, "ppo")["sha256"]
    with_rm = RLHFConfig(runs_dir=str(tmp_path), run="r")
    assert stages.resolve_inputs(with_rm, "ppo", require=False)["value_from"] == str(tmp_path / "r/rm/final")


def test_the_rollout_scores_decoded_responses_with_the_function(tokenizer):
    from rlhf.config import ModelConfig
    from rlhf.data import encode_prompts
    from rlhf.models import build_tiny_model
    from rlhf.stages.online_rl.roles import Roles
    from rlhf.stages.online_rl.rollout import rollout

    torch.manual_seed(0)
    prompts = ["sort ascending: 3 1 2", "sort descending: 5 9 1"]
    roles = Roles(policy=build_tiny_model(ModelConfig(), tokenizer), ref=build_tiny_model(ModelConfig(), tokenizer),
                  reward=FunctionReward(f"{__name__}:length_reward"))
    CALLS.clear()
    p = PPOStageConfig(rollout_batch_size=2, mini_batch_size=2)
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, max_new_tokens=5, prompts=prompts)
    assert [c[0] for c in CALLS] == prompts and [c[1] for c in CALLS] == r.texts
    assert r.raw_scores.tolist() == [float(len(t)) for t in r.texts]
    with pytest.raises(ValueError, match="pass the prompts"):
        rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, max_new_tokens=5)


def test_the_loop_trains_against_a_function_with_no_reward_model(tmp_path):
    import json

    from omegaconf import OmegaConf

    from rlhf.config import DataConfig, LoggerBackend, LoggerConfig, ModelConfig, StageConfig, ToyConfig
    from rlhf.core.artifacts import StageRun, save_final
    from rlhf.models import build_tiny_model, load_tokenizer
    from rlhf.stages.online_rl import loop

    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(0)
    save_final(build_tiny_model(ModelConfig(), tokenizer), tokenizer, tmp_path / "policy")
    cfg = RLHFConfig(
        runs_dir=str(tmp_path), run="r", stage=StageConfig("ppo"), logger=LoggerConfig(backend=LoggerBackend.none),
        data=DataConfig(toy=ToyConfig(num_prompts=300), max_prompt_tokens=16, max_response_tokens=12),
        reward=RewardConfig(source="function", function="rlhf.data.toy:gold_score"),
        ppo=PPOStageConfig(policy_from=str(tmp_path / "policy"), updates=1, rollout_batch_size=8, mini_batch_size=8,
                           ppo_epochs=1, eval_prompts=4, save_every_updates=0, no_eos_score=-1.0))
    check(cfg)
    with StageRun(cfg.stage_dir, OmegaConf.structured(cfg)) as stage_run:
        loop.run(cfg, stage_run)
    manifest = json.loads((cfg.stage_dir / "manifest.json").read_text())
    assert "reward_from" not in manifest["inputs"] and manifest["inputs"]["value_from"] == str(tmp_path / "policy")
    assert manifest["distributed"]["reward"] == {"function": "rlhf.data.toy:gold_score"}
    stats = manifest["metrics"]["last_update"]
    # no normalisation bias: an ended answer's score is its gold score, an unfinished one no_eos_score
    eos, gold = stats["eos_rate"], stats["gold_score"]
    assert stats["score_raw"] == pytest.approx(gold)
    assert -1.0 <= stats["score"] <= 1.0 and "value_loss" in stats  # PPO: a critic, started from the policy
    assert eos == 1.0 or stats["score"] < gold


def test_best_of_n_picks_the_best_by_a_function_and_prefers_answers_that_ended(tokenizer):
    """The one best-of-n (compare's bon:<n>, bon_sft's picks) with a function as the reward
    source: each prompt's pick is its highest-scoring candidate; with unfinished_score=-inf an
    answer cut at max_new_tokens is picked only when no candidate ended."""
    from rlhf.config import ModelConfig
    from rlhf.models import load_causal_lm
    from rlhf.sampling import best_of_n

    torch.manual_seed(0)
    policy = load_causal_lm(ModelConfig(), tokenizer).eval()  # untrained: long, rarely ended answers
    prompts = ["sort ascending: 3 1 2", "reverse: 1 2 3", "sort descending: 4 9"]
    reward = FunctionReward(f"{__name__}:length_reward")
    found = best_of_n(policy, reward, tokenizer, prompts, seeds=[1, 2, 3, 4], max_new_tokens=6)
    assert found.scores.shape == (4, 3)
    for i, pick in enumerate(found.best):
        assert len(pick.text) == max(len(c[i].text) for c in found.candidates)
        assert found.best_scores[i] == found.scores[:, i].max()
    again = best_of_n(policy, reward, tokenizer, prompts, seeds=[1, 2, 3, 4], max_new_tokens=6)
    assert [a.text for a in again.best] == [a.text for a in found.best]  # the same seeds draw the same way
    ended = best_of_n(policy, reward, tokenizer, prompts, seeds=[1, 2, 3, 4], max_new_tokens=6,
                      unfinished_score=float("-inf"))
    for i, pick in enumerate(ended.best):
        assert pick.ended or not any(c[i].ended for c in ended.candidates)
        if any(c[i].ended for c in ended.candidates):
            assert len(pick.text) == max(len(c[i].text) for c in ended.candidates if c[i].ended)
    assert any(a.text != b.text for a, b in zip(found.best, ended.best))  # the option changed a pick
