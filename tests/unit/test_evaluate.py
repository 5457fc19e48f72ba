"""evaluate's pairwise figures (the RM stage's eval metrics too) against hand-counted cases:
accuracy with ties as halves, the length baseline on the same pairs, by K and by source,
margins, gold; and its printed table."""

import numpy as np
import pytest

from rlhf.data import Comparison
from rlhf.stages.compare.stats import bootstrap_ci
from rlhf.stages.evaluate import pairwise_metrics, pairwise_table


def pair(source="a"):
    return Comparison("p", ("better", "worse"), (0, 1), source=source)


def test_accuracy_ties_and_the_length_baseline_on_pairs():
    comparisons = [pair(), pair(), pair(), pair("b")]
    scores = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5 + 1e-8), (2.0, -1.0)]  # right, wrong, tie, right
    lengths = [(5, 3), (2, 4), (3, 3), (9, 1)]  # longer, shorter, same, longer
    m = pairwise_metrics(comparisons, scores, lengths, resamples=200)
    assert m["pairs"] == 4 and m["comparisons"] == 4 and m["ties"] == 1
    assert m["accuracy"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert (m["longer_wins"], m["shorter_wins"], m["same_length"]) == (0.5, 0.25, 0.25)
    assert m["accuracy_low"] <= m["accuracy"] <= m["accuracy_high"]
    assert m["accuracy_source_a"] == pytest.approx(1.5 / 3) and m["pairs_source_a"] == 3
    assert m["accuracy_source_b"] == 1.0 and m["longer_wins_source_b"] == 1.0
    assert m["accuracy_k2"] == m["accuracy"] and m["pairs_k2"] == 4
    margins = [1.0, -1.0, -1e-8, 3.0]
    assert m["margin_mean"] == pytest.approx(np.mean(margins))
    assert m["margin_p50"] == pytest.approx(np.percentile(margins, 50))
    assert m["score_best_mean"] == pytest.approx(np.mean([1.0, 0.0, 0.5, 2.0]))
    assert "gold_accuracy" not in m


def test_k_wise_pairs_rank_ties_and_the_interval_weights_comparisons_by_their_pairs():
    # K = 3 ranked 0, 1, 1: pairs (0,1) and (0,2); responses 1 and 2 tie, so no pair between them
    three = Comparison("q", ("x", "y", "z"), (0, 1, 1))
    comparisons = [three, pair()]
    scores = [(3.0, 1.0, 4.0), (0.0, 1.0)]  # (0,1) right, (0,2) wrong; the pair wrong
    lengths = [(1, 2, 3), (4, 4)]  # better shorter twice; same length
    m = pairwise_metrics(comparisons, scores, lengths, resamples=500, seed=1)
    assert m["pairs"] == 3 and m["accuracy"] == pytest.approx(1 / 3)
    assert m["accuracy_k3"] == 0.5 and m["pairs_k3"] == 2 and m["accuracy_k2"] == 0.0
    assert (m["longer_wins"], m["shorter_wins"], m["same_length"]) == (0.0, pytest.approx(2 / 3), pytest.approx(1 / 3))
    # The interval resamples comparisons (a K-wise one's pairs are not independent): two
    # comparisons give three possible accuracies, 0.5 (the first twice, 1/4 of resamples), 0 (the
    # second twice, 1/4) and 1/3 (one of each: 1 right of 3 pairs), so the 95% interval is exactly
    # [0, 0.5]. Resampling the 3 pairs instead would reach 1.0 (all three the right one: 1/27).
    assert (m["accuracy_low"], m["accuracy_high"]) == (0.0, 0.5)
    assert m["score_worst_mean"] == pytest.approx((4.0 + 1.0) / 2)  # the last response is the worst-ranked


def test_gold_accuracy_of_the_rm_and_of_the_labels():
    # gold orders response 0 > 1 > 2 in both; the second comparison's labels swap 1 and 2
    comparisons = [Comparison("p", ("a", "b", "c"), (0, 1, 2)), Comparison("p", ("a", "c", "b"), (0, 1, 2))]
    gold = [(1.0, 0.5, 0.0), (1.0, 0.0, 0.5)]
    scores = [(2.0, 1.0, 0.0), (2.0, 1.0, 0.0)]  # the RM follows the labels
    m = pairwise_metrics(comparisons, scores, [(1, 1, 1)] * 2, gold, resamples=100)
    assert m["gold_pairs"] == 6
    assert m["gold_label_accuracy"] == pytest.approx(5 / 6)  # one of six gold pairs mislabelled
    assert m["gold_accuracy"] == pytest.approx(5 / 6)
    tied_gold = pairwise_metrics([pair()], [(1.0, 0.0)], [(1, 1)], [(0.3, 0.3)], resamples=10)
    assert tied_gold["gold_pairs"] == 0 and tied_gold["gold_accuracy"] is None


def test_bootstrap_weights_default_to_the_plain_mean_and_blocks_draw_the_same_resamples():
    values = np.random.default_rng(0).random(50)
    plain = bootstrap_ci(values, 300, 0.9, 4)
    assert bootstrap_ci(values, 300, 0.9, 4, weights=np.ones(50)) == pytest.approx(plain)
    big = np.random.default_rng(1).random(30_000)  # more than one block of resamples
    rng = np.random.default_rng(2)
    means = big[rng.integers(0, len(big), (300, len(big)))].mean(1)
    assert bootstrap_ci(big, 300, 0.9, 2) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])))


def test_the_table_shows_accuracy_the_length_baseline_and_gold():
    comparisons = [pair(), pair("b")]
    m = pairwise_metrics(comparisons, [(1.0, 0.0), (0.0, 1.0)], [(5, 3), (5, 3)], [(1.0, 0.0), (1.0, 0.0)],
                         resamples=50)
    text = pairwise_table(m, "RM x")
    assert "RM accuracy 0.500 [" in text and "on 2 pairs of 2 comparisons" in text
    assert "the longer reply wins 1.000, the shorter 0.000" in text
    assert "gold scorer: the RM orders 0.500" in text and "the labels 1.000" in text
    assert "K = 2" in text and "source b" in text


def test_evaluate_split_all_reads_every_record_of_every_source_pinned_or_not():
    from rlhf.config import DataConfig, DataFormat, RLHFConfig, SourceConfig
    from rlhf.stages.evaluate import _data_config

    data = DataConfig(name="a", format=DataFormat.prompt, path="a.jsonl", split="rm",
                      sources=[SourceConfig(name="b", format=DataFormat.prompt, path="b.jsonl", split="eval")])
    cfg = RLHFConfig(data=data)
    every = _data_config(cfg)
    assert every.split is None and [s.split for s in every.sources] == [None]
    assert (every.splits.sft, every.splits.rm, every.splits.ppo, every.splits.eval) == (1.0, 1.0, 1.0, 1.0)
    cfg.evaluate.split = "eval"  # one split: the sources as configured
    assert _data_config(cfg) is data
