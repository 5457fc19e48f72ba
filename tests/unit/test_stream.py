"""The prompt stream of stage 3: seeded passes, the next pass reshuffled, resumable from its state."""

import random

from rlhf.data.stream import Stream


def passes(items, seed, n):
    """The naive stream: pass k is the items shuffled by random.Random(seed + k), one after another."""
    out, k = [], 0
    while len(out) < n:
        order = list(range(len(items)))
        random.Random(seed + k).shuffle(order)
        out += [items[i] for i in order]
        k += 1
    return out[:n]


def test_take_gives_seeded_passes_each_reshuffled_with_the_next_seed():
    items = list("abcdefg")
    stream = Stream(items, seed=3)
    taken = stream.take(5) + stream.take(9) + stream.take(4)
    assert taken == passes(items, 3, 18)
    assert taken[:7] != taken[7:14]  # the second pass is in another order


def test_a_stream_restored_from_its_state_continues_with_the_same_items():
    items = list(range(10))
    first = Stream(items, seed=0)
    first.take(13)
    resumed = Stream(items, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert resumed.take(12) == first.take(12) == passes(items, 0, 25)[13:]
