"""Agreement between labellers and the mean-rank aggregate, against values worked out by hand."""

import itertools

import pytest

from rlhf.rank.agreement import agreement, dense_ranks, kendall_tau_b, mean_rank, pairs_agreed


def test_dense_ranks_and_the_mean_rank_aggregate():
    assert dense_ranks([1.5, 0.0, 1.5, 3.0]) == [1, 0, 1, 2]
    assert mean_rank([[0, 1, 2]]) == [0, 1, 2]
    assert mean_rank([[0, 2, 2]]) == [0, 1, 1]  # renumbered without a gap
    # means 0.5, 0.5, 2.0: the first two tie
    assert mean_rank([[0, 1, 2], [1, 0, 2]]) == [0, 0, 1]
    assert mean_rank([[0, 1], [1, 0]]) == [0, 0]  # the labellers cancel out: all tied


def test_pairs_agreed_counts_a_tie_against_a_preference_as_a_disagreement():
    assert pairs_agreed([0, 1, 2], [0, 1, 2]) == (3, 3)
    assert pairs_agreed([0, 1, 2], [0, 2, 1]) == (2, 3)  # (1, 2) flipped
    assert pairs_agreed([0, 1, 2], [2, 1, 0]) == (0, 3)
    assert pairs_agreed([0, 0, 1], [0, 1, 2]) == (2, 3)  # (0, 1): a tie against a preference
    assert pairs_agreed([0, 0, 1], [0, 0, 1]) == (3, 3)  # a tie agrees with a tie


def test_kendall_tau_b_by_hand_and_against_a_naive_formula():
    assert kendall_tau_b([0, 1, 2], [0, 1, 2]) == 1.0
    assert kendall_tau_b([0, 1, 2], [2, 1, 0]) == -1.0
    assert kendall_tau_b([0, 1, 2], [0, 2, 1]) == pytest.approx(1 / 3)  # C=2, D=1, no ties
    # x = [0, 0, 1], y = [0, 1, 2]: C=2, D=0, x ties 1 pair: 2 / sqrt(2 * 3)
    assert kendall_tau_b([0, 0, 1], [0, 1, 2]) == pytest.approx(2 / 6 ** 0.5)
    assert kendall_tau_b([0, 0, 0], [0, 1, 2]) is None  # undefined: one side ties everything

    def naive(x, y):  # tau-b as sum(sign*sign) over pairs / sqrt(untied pairs of x * of y)
        s = lambda v: (v > 0) - (v < 0)
        pairs = list(itertools.combinations(range(len(x)), 2))
        num = sum(s(x[i] - x[j]) * s(y[i] - y[j]) for i, j in pairs)
        return num / (sum(x[i] != x[j] for i, j in pairs) * sum(y[i] != y[j] for i, j in pairs)) ** 0.5

    for x in itertools.product(range(3), repeat=4):
        for y in ([0, 1, 2, 3], [3, 1, 1, 0], [0, 2, 1, 2]):
            if len(set(x)) > 1:
                assert kendall_tau_b(list(x), y) == pytest.approx(naive(list(x), y))


def test_agreement_over_prompts_with_several_labels_only():
    labelled = {
        "p1": {"ann": [0, 1, 2], "bob": [0, 1, 2]},  # 3 of 3 pairs alike, tau 1
        "p2": {"ann": [0, 1, 2], "bob": [0, 2, 1]},  # 2 of 3, tau 1/3
        "p3": {"ann": [0, 1, 2], "bob": [2, 1, 0]},  # 0 of 3, tau -1
        "p4": {"ann": [1, 0, 2]},  # one label: not counted
    }
    result = agreement(labelled)
    assert result["prompts"] == 3 and result["answer_pairs"] == 9
    assert result["pairwise"] == pytest.approx(5 / 9)
    assert result["kendall_tau"] == pytest.approx((1 + 1 / 3 - 1) / 3)
    # three labellers of one prompt: every pair of them counts
    three = agreement({"p": {"a": [0, 1], "b": [0, 1], "c": [1, 0]}})
    assert three["answer_pairs"] == 3 and three["pairwise"] == pytest.approx(1 / 3)
    assert agreement({"p": {"a": [0, 1]}}) == {"prompts": 0, "answer_pairs": 0, "pairwise": None, "kendall_tau": None}
