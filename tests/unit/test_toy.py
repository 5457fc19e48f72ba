"""The built-in toy task: its gold scorer on hand-computed cases, and its generator's knobs."""

import pytest

from rlhf.config import ToyConfig
from rlhf.data import Comparison, Demonstration
from rlhf.data.toy import answer, generate, gold_score


@pytest.mark.parametrize("prompt,response,score", [
    ("sort ascending: 3 1 2", "1 2 3", 1.0),
    ("sort ascending: 3 1 2", "1 2", 2 / 3),          # stopped early
    ("sort ascending: 3 1 2", "1 2 3 3", 3 / 4),      # rambled past the answer
    ("sort ascending: 3 1 2", "2 1 3", 1 / 3),        # out of order
    ("sort ascending: 3 1 2", "3 2 1", 1 / 3),        # ignored the instruction
    ("sort descending: 3 1 2", "3 2 1", 1.0),
    ("sort ascending: 3 1 2", "", 0.0),
    ("sort ascending: 3 1 2", "one two three", 0.0),
    ("reverse: 2 7 1", "1 7 2", 1.0),
    ("reverse: 2 7 1", "2 7 1", 1 / 3),
    ("reverse: 5 5 0 9", "  9 0 5 5 ", 1.0),  # whitespace does not matter
])
def test_gold_score_hand_computed(prompt, response, score):
    assert gold_score(prompt, response) == pytest.approx(score)


def test_gold_score_reads_chat_prompts_and_rejects_foreign_ones():
    assert gold_score(({"role": "user", "content": "sort ascending: 2 1"},), "1 2") == 1.0
    assert answer("sort descending: 9 0 5") == "9 5 0"
    with pytest.raises(ValueError, match="not a toy-task prompt"):
        answer("sort sideways: 1 2")
    with pytest.raises(ValueError, match="not a toy-task prompt"):
        gold_score("What is the capital of France?", "Paris")


def test_generator_is_deterministic_and_seeded():
    a, b = list(generate(ToyConfig(num_prompts=200))), list(generate(ToyConfig(num_prompts=200)))
    assert a == b
    assert list(generate(ToyConfig(num_prompts=200, seed=1))) != a


def test_demonstrations_have_the_configured_share_of_flaws():
    for fraction in (0.0, 0.3):
        demos = [r for r in generate(ToyConfig(num_prompts=2000, flawed_fraction=fraction))
                 if isinstance(r, Demonstration)]
        flawed = sum(gold_score(d.prompt, d.response) < 1 for d in demos) / len(demos)
        assert abs(flawed - fraction) < 0.04, (fraction, flawed)


def test_comparisons_are_k_wise_ranked_by_gold_with_label_noise():
    def comparisons(noise):
        cfg = ToyConfig(num_prompts=2000, responses_per_comparison=4, label_noise=noise)
        return [r for r in generate(cfg) if isinstance(r, Comparison)]

    for c in comparisons(0.0):
        assert c.k == 4 and len(set(c.responses)) == 4
        scores = [gold_score(c.prompt, r) for r in c.responses]
        assert scores == sorted(scores, reverse=True)
        # equal gold scores are ties, and ties give no pair
        assert all((c.ranks[i] == c.ranks[j]) == (scores[i] == scores[j]) for i, j in [(0, 1), (1, 2), (2, 3)])
    noisy = comparisons(0.2)
    misordered = sum(any(gold_score(c.prompt, c.responses[i]) < gold_score(c.prompt, c.responses[j])
                         for i, j in c.pairs()) for c in noisy) / len(noisy)
    assert 0.12 < misordered < 0.22  # a swap needs an untied adjacent pair, which most have


def test_too_many_prompts_for_the_space_is_a_clear_error():
    with pytest.raises(ValueError, match="data.toy.num_prompts=500 exceeds the 220 distinct"):
        list(generate(ToyConfig(num_prompts=500, min_items=1, max_items=2, tasks=["ascending", "reverse"])))
