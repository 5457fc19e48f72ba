"""How several labellers' rankings of the same answers combine and agree: pure functions over
rank lists (0 = best, equal = tie), shared by the labelling server's summary and its export.

Agreement is measured as InstructGPT measured it (72.6% between its labellers): over every pair
of answers that two labellers both ranked, the share of pairs they order the same way (a tie
against a preference counts as a disagreement). Kendall's tau-b, the rank correlation that
allows ties, is reported beside it, averaged over (prompt, labeller pair).
"""

from __future__ import annotations

import itertools
import math


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def dense_ranks(values: list[float]) -> list[int]:
    """[1.5, 0.0, 1.5] -> [1, 0, 1]: equal values tie, the smallest value is rank 0."""
    distinct = sorted(set(values))
    return [distinct.index(v) for v in values]


def mean_rank(labels: list[list[int]]) -> list[int]:
    """The aggregate of several rankings of the same K answers: each answer's mean rank, ranked
    again (equal means tie). One ranking is returned as it is, up to dense renumbering."""
    k = len(labels[0])
    return dense_ranks([sum(ranks[i] for ranks in labels) / len(labels) for i in range(k)])


def pairs_agreed(a: list[int], b: list[int]) -> tuple[int, int]:
    """(agreeing answer pairs, all answer pairs) of two rankings of the same answers."""
    agreed = total = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        total += 1
        agreed += _sign(a[i] - a[j]) == _sign(b[i] - b[j])
    return agreed, total


def kendall_tau_b(a: list[int], b: list[int]) -> float | None:
    """Kendall's tau-b of two rankings; None where it is undefined (one ranking ties every answer)."""
    concordant = discordant = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        product = _sign(a[i] - a[j]) * _sign(b[i] - b[j])
        concordant += product > 0
        discordant += product < 0
        ties_a += a[i] == a[j]
        ties_b += b[i] == b[j]
    n0 = len(a) * (len(a) - 1) // 2
    denominator = math.sqrt((n0 - ties_a) * (n0 - ties_b))
    return (concordant - discordant) / denominator if denominator else None


def agreement(labelled: dict[str, dict[str, list[int]]]) -> dict:
    """Agreement over every prompt that two or more labellers ranked. `labelled` maps a prompt's key
    to {labeller: ranks}; prompts with one label are not counted."""
    agreed = total = 0
    taus = []
    prompts = 0
    for by_labeller in labelled.values():
        if len(by_labeller) < 2:
            continue
        prompts += 1
        for x, y in itertools.combinations(sorted(by_labeller), 2):
            a, b = by_labeller[x], by_labeller[y]
            n_agreed, n_pairs = pairs_agreed(a, b)
            agreed += n_agreed
            total += n_pairs
            tau = kendall_tau_b(a, b)
            if tau is not None:
                taus.append(tau)
    return {"prompts": prompts, "answer_pairs": total,
            "pairwise": agreed / total if total else None,
            "kendall_tau": sum(taus) / len(taus) if taus else None}
