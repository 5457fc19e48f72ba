"""Stage 3's reward from a Python function (reward=function / reward=toy_gold): loading, errors
that name the input, the rollout scoring decoded text, and no reward model read anywhere."""

import math

import pytest
import torch

from rlhf import lineage, stages
from rlhf.config import ConfigError, PPOStageConfig, RewardConfig, RLHFConfig
from rlhf.checks import check
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
    with pytest.raises(ConfigError, match="reward.source=.oracle.: choose one of ensemble, function, model, verifier"):
        check(RLHFConfig(reward=RewardConfig(source="oracle")))
    check(RLHFConfig(reward=RewardConfig(source="function", function="rlhf.data.toy:gold_score")))


def test_the_verifier_reward_is_checked_against_the_data():
    from rlhf.config import DataConfig, DataFormat

    ifeval = DataConfig(name="ifeval", format=DataFormat.ifeval, path="prompts.jsonl")
    with pytest.raises(ConfigError, match="reward.source=verifier .*needs data=ifeval .*not toy"):
        check(RLHFConfig(reward=RewardConfig(source="verifier")))
    with pytest.raises(ConfigError, match="reward.check='lenient': choose strict or loose") as e:
        check(RLHFConfig(data=ifeval, reward=RewardConfig(source="verifier", check="lenient", credit="most")))
    assert "reward.credit='most': choose all or fraction" in str(e.value)
    check(RLHFConfig(data=ifeval, reward=RewardConfig(source="verifier", check="loose", credit="fraction")))


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
    from rlhf.data import encode_prompts
    from rlhf.stages.online_rl.rollout import rollout
    from tests.conftest import tiny_roles

    prompts = ["sort ascending: 3 1 2", "sort descending: 5 9 1"]
    roles = tiny_roles(tokenizer, FunctionReward(f"{__name__}:length_reward"))
    CALLS.clear()
    p = PPOStageConfig(rollout_batch_size=2, mini_batch_size=2)
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, max_new_tokens=5, prompts=prompts)
    assert [c[0] for c in CALLS] == prompts and [c[1] for c in CALLS] == r.texts
    assert r.scores.tolist() == [float(len(t)) for t in r.texts]
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
    assert manifest["distributed"]["reward"] == {"source": "function", "function": "rlhf.data.toy:gold_score"}
    assert manifest["method"]["reward"] == manifest["distributed"]["reward"]  # what compare reads
    stats = manifest["metrics"]["last_update"]
    # no normalisation bias: an ended answer's score is its gold score, an unfinished one no_eos_score
    eos, gold = stats["eos_rate"], stats["gold_score"]
    assert stats["score_raw"] == pytest.approx(gold)
    assert "value_loss" in stats  # PPO: a critic, started from the policy
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


# ---- ensembles and weighted sums (rlhf/sampling/reward.py) ----

class ConstantRM(torch.nn.Module):
    """A stand-in reward model: fixed raw scores per call, and a saved normalisation."""

    def __init__(self, raw: list[float], bias: float, raw_std: float):
        super().__init__()
        from types import SimpleNamespace

        from rlhf.models import REWARD_NORM_KEY

        self.raw = torch.tensor(raw)
        self.config = SimpleNamespace(**{REWARD_NORM_KEY: {"bias": bias, "raw_std": raw_std}})

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.raw[input_ids[:, 0], None])  # row i's first token is i


def test_an_ensemble_normalises_each_member_then_takes_the_mean_or_mean_minus_std():
    from rlhf.sampling import EnsembleReward, ModelReward
    from rlhf.sampling.reward import combine_members

    raws = [[1.0, 2.0, 3.0], [10.0, 0.0, 4.0], [0.5, 0.5, -1.0]]
    biases, stds = [-1.0, -2.0, 0.5], [1.0, 4.0, 0.5]
    members = [ModelReward(ConstantRM(r, b, s), None, f"rm{i}") for i, (r, b, s) in enumerate(zip(raws, biases, stds))]
    seq, att = torch.arange(3)[:, None].repeat(1, 4), torch.ones(3, 4, dtype=torch.long)
    common = sum(stds) / 3
    # naive: each member's (raw + bias) rescaled to the members' mean std, then across members
    normalised = [[(raws[m][i] + biases[m]) * common / stds[m] for i in range(3)] for m in range(3)]
    for combine, coef in (("mean", 0.0), ("mean_minus_std", 0.5)):
        ensemble = EnsembleReward([ModelReward(m.model, None, m.path) for m in members], combine, coef)
        got = ensemble.score_sequences(seq, att, None, None, chunk_rows=2)
        for i in range(3):
            column = [normalised[m][i] for m in range(3)]
            mean = sum(column) / 3
            std = math.sqrt(sum((x - mean) ** 2 for x in column) / 2)
            assert got[i].item() == pytest.approx(mean - coef * std, abs=1e-5)
    assert combine_members(torch.tensor([[1.0], [3.0]]), "mean_minus_std", 1.0).item() == pytest.approx(2 - math.sqrt(2))
    with pytest.raises(ConfigError, match="at least 2 reward models"):
        EnsembleReward(members[:1])


def test_a_weighted_sum_adds_its_terms_and_describes_them():
    from rlhf.sampling import EnsembleReward, FunctionReward, ModelReward, WeightedSum

    rm = ModelReward(ConstantRM([1.0, -1.0], bias=0.5, raw_std=1.0), None, "runs/r/rm/final")
    total = WeightedSum([(2.0, rm), (0.5, FunctionReward(f"{__name__}:length_reward"))])
    seq, att = torch.arange(2)[:, None].repeat(1, 3), torch.ones(2, 3, dtype=torch.long)
    got = total.score_sequences(seq, att, ["p", "q"], ["abcd", ""], chunk_rows=8)
    assert got.tolist() == pytest.approx([2.0 * 1.5 + 0.5 * 4, 2.0 * -0.5 + 0.0])
    assert total.describe() == {"source": "sum", "sum": [
        {"weight": 2.0, "source": "model", "model": "runs/r/rm/final"},
        {"weight": 0.5, "source": "function", "function": f"{__name__}:length_reward"}]}
    # compare's label of a policy trained against it: the algorithm and each source's label
    from rlhf.stages.online_rl.loop import method_label

    assert method_label(PPOStageConfig(advantage="grpo"), total) == f"grpo, 2 x RM + 0.5 x {__name__}:length_reward"
    pair = EnsembleReward([rm, ModelReward(ConstantRM([0.0, 0.0], bias=0.0, raw_std=1.0), None, "b")],
                          "mean_minus_std", 0.5)
    assert method_label(PPOStageConfig(), pair) == "ppo, ensemble of 2 (mean - 0.5 std)"


def test_ensemble_members_default_to_every_reward_model_of_the_run_and_say_how_to_train_more(tmp_path):
    from rlhf.config import RewardTerm

    def rm_folder(name):
        (tmp_path / "r" / name / "final").mkdir(parents=True)

    cfg = RLHFConfig(runs_dir=str(tmp_path), run="r", reward=RewardConfig(source="ensemble"))
    rm_folder("rm")
    with pytest.raises(ConfigError, match=r"has 1 reward model.*rlhf -m stage=rm run=r seed=1,2,3"):
        stages.reward_models(cfg)
    rm_folder("rm@seed=1")
    rm_folder("rm@seed=2")
    (tmp_path / "r" / "rm@seed=3").mkdir()  # unfinished: no final/
    assert stages.reward_models(cfg) == {"member_0": str(tmp_path / "r/rm/final"),
                                         "member_1": str(tmp_path / "r/rm@seed=1/final"),
                                         "member_2": str(tmp_path / "r/rm@seed=2/final")}
    assert "reward_from" not in stages.resolve_inputs(cfg, "ppo", require=False)  # the members replace it
    given = RLHFConfig(runs_dir=str(tmp_path), run="r",
                       reward=RewardConfig(source="ensemble", members=["a", "b"],
                                           add=[RewardTerm(model="c", weight=0.1)]))
    assert stages.reward_models(given) == {"member_0": "a", "member_1": "b", "add_0": "c"}
    # the members are inputs of stage 3: another set is another fingerprint
    assert lineage.fingerprint(cfg, "ppo")["sha256"] != lineage.fingerprint(given, "ppo")["sha256"]
    assert "reward:member_2" in lineage.fingerprint(cfg, "ppo")["inputs"]


def test_ensemble_and_sum_settings_are_checked():
    from rlhf.config import RewardTerm

    with pytest.raises(ConfigError, match=r"reward.members=\['a'\]: an ensemble needs at least 2"):
        check(RLHFConfig(reward=RewardConfig(source="ensemble", members=["a"])))
    with pytest.raises(ConfigError, match="reward.combine='max': choose mean or mean_minus_std"):
        check(RLHFConfig(reward=RewardConfig(combine="max")))
    with pytest.raises(ConfigError, match=r"reward.add\[0\]: give one of model .* or function"):
        check(RLHFConfig(reward=RewardConfig(add=[RewardTerm(weight=1.0)])))
    with pytest.raises(ConfigError, match=r"reward.add\[1\].function='nope'"):
        check(RLHFConfig(reward=RewardConfig(add=[RewardTerm(model="m"), RewardTerm(function="nope")])))
    check(RLHFConfig(reward=RewardConfig(source="ensemble", combine="mean_minus_std", std_coef=0.5,
                                         add=[RewardTerm(function="rlhf.data.toy:gold_score", weight=0.5)])))
