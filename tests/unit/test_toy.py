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


# ---- the demonstrator apart from the labeller (data.toy.demo_flaws, demo_flaw_mode) ----------


def demo_flaws(cfg):
    from collections import Counter

    from rlhf.data.toy import demonstration_flaw

    return Counter(demonstration_flaw(r.prompt, r.response) for r in generate(cfg) if isinstance(r, Demonstration))


@pytest.mark.parametrize("prompt,response,kind", [
    ("sort ascending: 3 1 2", "1 2 3", "exact"), ("sort ascending: 3 1 2", "1 2", "drop_last"),
    ("sort ascending: 3 1 2", "1 2 3 3", "extra_item"), ("sort ascending: 3 1 2", "2 1 3", "swap"),
    ("sort ascending: 3 1 2", "1 3 2", "swap"), ("sort ascending: 3 1 2", "3 2 1", "other"),
    ("sort ascending: 3 1 2", "1 3", "other"), ("sort descending: 3 1 2", "3 2", "drop_last")])
def test_a_demonstrations_flaw_is_named_by_hand(prompt, response, kind):
    from rlhf.data.toy import demonstration_flaw

    assert demonstration_flaw(prompt, response) == kind


def test_the_default_demonstrator_is_unchanged_and_draws_every_kind():
    # the counts of the default generator before the demonstrator had settings (seed 0, 12,000 prompts)
    assert demo_flaws(ToyConfig()) == {"exact": 8460, "extra_item": 1214, "swap": 1188, "drop_last": 1138}


@pytest.mark.parametrize("kinds,made", [(["drop_last"], "drop_last"), (["swap", "extra_item"], "swap"),
                                        (["extra_item"], "extra_item")])
def test_a_systematic_demonstrator_makes_one_habit_at_the_share_asked(kinds, made):
    counts = demo_flaws(ToyConfig(num_prompts=4000, flawed_fraction=0.8, demo_flaws=kinds, demo_flaw_mode="systematic"))
    # the first kind listed that applies; the next only where it cannot (no two different digits to swap)
    assert set(counts) <= {"exact", *kinds} and sum(counts[k] for k in kinds if k != made) < 0.01 * 4000
    # 4,000 demonstrations at 0.8: the binomial's standard error is 0.0063; 4 of them either side
    assert (counts[made] + sum(counts[k] for k in kinds if k != made)) / 4000 == pytest.approx(0.8, abs=0.026)


def test_a_systematic_habit_is_always_in_the_same_place():
    from rlhf.data.toy import habit

    assert habit(["1", "1", "2", "3"], ["swap"]) == (["1", "2", "1", "3"], "swap")  # the first different pair
    assert habit(["4", "4"], ["swap", "drop_last"]) == (["4"], "drop_last")  # no pair to swap: the next kind
    assert habit(["7"], ["drop_last", "extra_item"]) == (["7", "7"], "extra_item")


def test_an_unknown_flaw_kind_or_mode_is_refused():
    from rlhf.config import ConfigError, DataConfig, RLHFConfig
    from rlhf.checks import check

    with pytest.raises(ConfigError, match=r"(?s)data.toy.demo_flaws=\['typo'\].*data.toy.demo_flaw_mode='often'"):
        check(RLHFConfig(data=DataConfig(toy=ToyConfig(demo_flaws=["typo"], demo_flaw_mode="often"))))
