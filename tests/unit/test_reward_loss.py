"""The K-wise loss against a naive loop over pairs, and one forward per response."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhf.config import ModelConfig
from rlhf.data import Comparison
from rlhf.models import load_causal_lm
from rlhf.algos.preference import kwise_loss
from rlhf.stages.reward_model import KWiseCollator, comparison_dataset

COMPARISONS = [
    Comparison("sort ascending: 3 1 2", ("1 2 3", "1 3 2", "2 1 3", "3"), (0, 1, 1, 2)),  # a tie
    Comparison("sort descending: 5 9", ("9 5", "5 9"), (0, 1), margin=0.7),
    Comparison("sort ascending: 4 4 0", ("0 4 4", "0 4", "4 0 4", "0 4 4 4", "4"), (0, 1, 2, 3, 4)),
]


def naive_loss(scores_per_comparison):
    """InstructGPT: for each prompt, the mean over its C(K,2) pairs (ties skipped) of
    -log sigmoid(r_w - r_l - margin); then the mean over prompts."""
    per_prompt = []
    for c, s in zip(COMPARISONS, scores_per_comparison):
        terms = []
        for i in range(c.k):
            for j in range(c.k):
                if c.ranks[i] < c.ranks[j]:
                    terms.append(-math.log(1 / (1 + math.exp(-(s[i] - s[j] - (c.margin or 0.0))))))
        per_prompt.append(sum(terms) / len(terms))
    return sum(per_prompt) / len(per_prompt)


def test_pairs_skip_ties_and_cover_all_others():
    assert list(COMPARISONS[0].pairs()) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    assert len(list(COMPARISONS[2].pairs())) == math.comb(5, 2)


def test_kwise_loss_equals_naive_loop(tokenizer):
    batch = KWiseCollator(tokenizer.pad_token_id)(list(comparison_dataset(tokenizer, COMPARISONS)))
    torch.manual_seed(0)
    scores = torch.randn(batch["input_ids"].shape[0], dtype=torch.float64)
    loss = kwise_loss(scores, batch["better"], batch["worse"], batch["group"], batch["margin"].double(), 3)
    sizes = [c.k for c in COMPARISONS]
    per_comparison = [s.tolist() for s in torch.split(scores, sizes)]
    assert loss.item() == pytest.approx(naive_loss(per_comparison), rel=1e-7)  # margin is float32


def test_each_response_is_forwarded_once_and_the_loss_matches_separate_forwards(tokenizer):
    model = load_causal_lm(ModelConfig(), tokenizer).eval()
    head = torch.nn.Linear(model.config.hidden_size, 1)

    def scorer(input_ids, attention_mask):
        hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(1) - 1  # right padded
        return head(hidden[torch.arange(len(last)), last])[:, 0]

    rows = []
    batch = KWiseCollator(tokenizer.pad_token_id)(list(comparison_dataset(tokenizer, COMPARISONS)))
    assert batch["input_ids"].shape[0] == sum(c.k for c in COMPARISONS) == 11
    with torch.no_grad():
        rows.append(batch["input_ids"].shape[0])
        batched = kwise_loss(scorer(batch["input_ids"], batch["attention_mask"]), batch["better"],
                             batch["worse"], batch["group"], batch["margin"], len(COMPARISONS))
        separate = []
        for c, ex in zip(COMPARISONS, comparison_dataset(tokenizer, COMPARISONS)):
            separate.append([scorer(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
                             for ids in ex["input_ids"]])
    assert batched.item() == pytest.approx(naive_loss(separate), abs=1e-5)
    # the pair indices point at the right rows: better/worse of the margin comparison
    assert batch["better"][5:6].tolist() == [4] and batch["worse"][5:6].tolist() == [5]
    assert batch["margin"][5].item() == pytest.approx(0.7)


def test_kwise_loss_is_bradley_terry_for_one_pair():
    s = torch.tensor([2.0, -1.0])
    loss = kwise_loss(s, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([0.0]), 1)
    assert loss.item() == pytest.approx(-F.logsigmoid(torch.tensor(3.0)).item())


def test_normalisation_makes_the_demonstrations_score_mean_zero_and_keeps_the_raw_order(tmp_path, tokenizer):
    """InstructGPT's RM normalisation: a bias so that the SFT demonstrations score mean 0 when
    scored as every consumer scores (rlhf.sampling.score adds the saved bias); each score is
    its raw score minus the raw mean."""
    from rlhf.data import Demonstration
    from rlhf.models import build_tiny_model, load_reward_model
    from rlhf.sampling import score
    from rlhf.stages.reward_model import normalize

    torch.manual_seed(0)
    build_tiny_model(ModelConfig(), tokenizer).save_pretrained(tmp_path)
    model = load_reward_model(ModelConfig(), tokenizer, str(tmp_path))
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a head that scores answers apart
    demos = [Demonstration(c.prompt, r) for c in COMPARISONS for r in c.responses]
    prompts, responses = [d.prompt for d in demos], [d.response for d in demos]
    raw = score(model, tokenizer, prompts, responses, normalized=False)
    assert raw.mean().abs() > 0.1  # else the test could not tell a bias of the wrong sign
    stats = normalize(model, tokenizer, demos)
    scored = score(model, tokenizer, prompts, responses)
    assert torch.allclose(scored, raw - raw.mean(), atol=1e-5)
    assert stats["raw_demonstration_mean"] == pytest.approx(raw.mean().item(), abs=1e-6)
