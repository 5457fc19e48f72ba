"""DPO (rlhf/stages/dpo.py): K-wise rankings become pairs as documented, trl's DPO batches hold
the data layer's token sequences, the reference is a frozen copy of the starting policy, and a
few steps make the implicit reward prefer the chosen responses."""

import math

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from rlhf.config import DataConfig, DPOStageConfig, LoggerBackend, LoggerConfig, ModelConfig, RLHFConfig, ToyConfig
from rlhf.data import Comparison, Demonstration, encode_prompts, load_data, preference_pairs
from rlhf.models import build_tiny_model
from rlhf.stages.dpo import build_trainer, dpo_dataset, implicit_reward_accuracy
from rlhf.stages.sft import sft_dataset

CHAT = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "sort descending: 1 5"})


def kwise(ranks, prompt="p"):
    return Comparison(prompt, tuple(f"r{i}" for i in range(len(ranks))), tuple(ranks))


def test_all_pairs_are_every_better_worse_pair_in_order_without_ties():
    # K = 4 with responses 1 and 2 tied: C(4,2) = 6 pairs minus the tie
    triples = preference_pairs([kwise([0, 1, 1, 2]), kwise([0, 1], "q")], "all")
    assert [(p, c, r) for p, c, r in triples] == [
        ("p", "r0", "r1"), ("p", "r0", "r2"), ("p", "r0", "r3"), ("p", "r1", "r3"), ("p", "r2", "r3"),
        ("q", "r0", "r1")]
    assert len(preference_pairs([kwise([0, 1, 2, 3, 4])], "all")) == 10  # C(5,2)
    assert preference_pairs([kwise([0, 0])], "all") == []  # all tied: no pair


def test_best_pairs_put_the_best_against_each_other_response():
    assert preference_pairs([kwise([0, 1, 2, 3])], "best") == [("p", "r0", "r1"), ("p", "r0", "r2"),
                                                              ("p", "r0", "r3")]
    # two responses tied for best: each against every worse one, never against each other
    assert preference_pairs([kwise([0, 0, 1])], "best") == [("p", "r0", "r2"), ("p", "r1", "r2")]
    with pytest.raises(ValueError, match="choose all or best"):
        preference_pairs([kwise([0, 1])], "worst")


def test_a_dpo_batch_holds_the_sft_formatting_of_the_same_prompt(tokenizer):
    triples = [("sort ascending: 3 1 2", "1 2 3", "3 2 1"), (CHAT, "5 1", "1 5")]
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(list(dpo_dataset(tokenizer, triples)))
    sft = sft_dataset(tokenizer, [Demonstration(p, c) for p, c, _ in triples]
                      + [Demonstration(p, r) for p, _, r in triples])
    n = len(triples)
    for row in range(2 * n):  # chosen rows first, then rejected: each equals SFT's sequence of that answer
        expected = sft[row]["input_ids"]
        length = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :length].tolist() == expected
        assert batch["completion_mask"][row, :length].tolist() == sft[row]["completion_mask"]
    prompt_ids = encode_prompts(tokenizer, [p for p, _, _ in triples])
    for row, ids in enumerate(prompt_ids):
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
        assert batch["completion_mask"][row, : len(ids)].eq(0).all()


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A starting policy saved as a stage would save it (the tiny model, untrained)."""
    from rlhf.models import load_tokenizer

    folder = tmp_path_factory.mktemp("dpo") / "sft"
    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(0)
    build_tiny_model(ModelConfig(), tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def config(tmp_path, start, **dpo) -> RLHFConfig:
    dpo = {"max_steps": 40, "per_device_batch_size": 8, "learning_rate": 3e-3, "warmup": 0, "eval_every_steps": 0,
           "save_every_steps": 0, "lr_scheduler": "constant", "init_from": str(start), **dpo}
    return RLHFConfig(runs_dir=str(tmp_path), data=DataConfig(toy=ToyConfig(num_prompts=150)),
                      logger=LoggerConfig(backend=LoggerBackend.none), dpo=DPOStageConfig(**dpo))


def test_the_reference_is_a_frozen_copy_of_the_start_and_the_implicit_reward_learns(tokenizer, tmp_path, start):
    from safetensors.torch import load_file

    cfg = config(tmp_path, start)
    bundle = load_data(cfg.data, tokenizer)
    trainer, info = build_trainer(cfg, tokenizer, bundle)
    saved = load_file(start / "model.safetensors")
    reference = trainer.ref_model
    assert reference is not None and reference is not trainer.model
    assert all(torch.equal(reference.state_dict()[k], v) for k, v in saved.items())
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in saved.items())
    assert not any(p.requires_grad for p in reference.parameters())
    pairs = preference_pairs(bundle.splits["rm"].comparisons, "all")[:128]
    assert info["train_pairs"] == len(preference_pairs(bundle.splits["rm"].comparisons, "all"))
    # identical policy and reference: every implicit reward is 0, every pair a tie
    assert implicit_reward_accuracy(trainer.model, reference, tokenizer, pairs) == 0.5

    trainer.train()
    assert all(torch.equal(reference.state_dict()[k], v) for k, v in saved.items())  # untouched by training
    moved = max((trainer.model.state_dict()[k] - v).abs().max().item() for k, v in saved.items())
    assert moved > 1e-3
    accuracy = implicit_reward_accuracy(trainer.model, reference, tokenizer, pairs)
    assert accuracy > 0.65, accuracy


# Each loss at a zero margin (the policy equal to its reference, as at the first step), with beta
# 0.25 and robust's label smoothing 0.1, by the papers' formulas: DPO -log sigmoid(0); IPO
# (0 - 1/(2 beta))^2; hinge (SLiC) max(0, 1 - beta * 0); robust (cDPO, Chowdhury et al. 2024)
# (-(1 - e) log sigmoid(0) + e log sigmoid(0)) / (1 - 2e). A loss type not passed on to trl gives
# DPO's value, so ipo and hinge fail; robust equals DPO at a zero margin, so for it this checks
# only that trl takes the name with its label smoothing.
ZERO_MARGIN_LOSS = {"sigmoid": math.log(2), "ipo": (1 / (2 * 0.25)) ** 2, "hinge": 1.0,
                    "robust": (0.9 * math.log(2) - 0.1 * math.log(2)) / 0.8}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_each_offered_loss_type_is_its_formula_at_the_first_step(tokenizer, tmp_path, start, loss_type):
    cfg = config(tmp_path, start, loss_type=loss_type, max_steps=1, beta=0.25,
                 label_smoothing=0.1 if loss_type == "robust" else 0.0)
    trainer, _ = build_trainer(cfg, tokenizer, load_data(cfg.data, tokenizer))
    trainer.train()
    assert trainer.state.global_step == 1
    assert trainer.state.log_history[-1]["train_loss"] == pytest.approx(ZERO_MARGIN_LOSS[loss_type], rel=1e-4)


def test_group_by_length_batches_pairs_of_similar_length(tokenizer, tmp_path, start):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    cfg = config(tmp_path, start, group_by_length=True, per_device_batch_size=4)
    trainer, _ = build_trainer(cfg, tokenizer, load_data(cfg.data, tokenizer))
    dataset = trainer._remove_unused_columns(trainer.train_dataset)
    sampler = trainer._get_train_sampler(dataset)
    assert isinstance(sampler, LengthGroupedSampler)
    lengths = dataset["length"]
    order = list(sampler)
    spread = lambda batches: sum(max(b) - min(b) for b in batches) / len(batches)  # noqa: E731
    grouped = [[lengths[i] for i in order[k:k + 4]] for k in range(0, len(order) - 3, 4)]
    shuffled = [[lengths[i] for i in range(k, k + 4)] for k in range(0, len(order) - 3, 4)]
    assert spread(grouped) < spread(shuffled) / 2
    trainer.train()  # the length column reaches the sampler, not the collator's batch
