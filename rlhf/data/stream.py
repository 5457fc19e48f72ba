"""Endless reshuffled passes over a list, resumable from two integers."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Generic, Sequence, TypeVar

T = TypeVar("T")


@dataclass
class StreamPosition:
    position: int = 0  # index into the current pass's order
    epoch_seed: int = 0  # the current pass's order follows from this seed alone


class Stream(Generic[T]):
    """`take(n)` gives the next n items of a pass over `items` in a seeded random order, and
    starts the next pass (seed + 1) when one ends. The position is two integers: a resumed run
    restores them and continues with exactly the items it would have drawn. (torch's samplers
    keep their place in an iterator, which a checkpoint cannot hold.)"""

    def __init__(self, items: Sequence[T], seed: int):
        if not items:
            raise ValueError("an empty list cannot be streamed")
        self.items = items
        self.at = StreamPosition(epoch_seed=seed)

    def take(self, n: int) -> list[T]:
        taken, order = [], None
        while len(taken) < n:
            if order is None:
                order = list(range(len(self.items)))
                random.Random(self.at.epoch_seed).shuffle(order)
            taken.append(self.items[order[self.at.position]])
            self.at.position = (self.at.position + 1) % len(order)
            if self.at.position == 0:
                self.at.epoch_seed, order = self.at.epoch_seed + 1, None
        return taken

    def state_dict(self) -> dict:
        return asdict(self.at)

    def load_state_dict(self, state: dict) -> None:
        self.at = StreamPosition(**state)
