"""The bounded in-memory hand-off between the training thread and the sender thread."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class PriorityDropQueue(Generic[T]):
    """FIFO with a size bound that never blocks: when full, the oldest item of the lowest
    priority below the newcomer's is evicted; if there is none, the newcomer is refused.

    Not synchronised: the transport guards it with its own lock.
    """

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self._items: deque[tuple[int, T]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, priority: int) -> tuple[bool, int]:
        """Append; returns (accepted, number of items evicted to make room)."""
        evicted = 0
        if len(self._items) >= self.maxlen:
            lowest = min(range(len(self._items)), key=lambda i: (self._items[i][0], i))
            if self._items[lowest][0] >= priority:
                return False, 0
            del self._items[lowest]
            evicted = 1
        self._items.append((priority, item))
        return True, evicted

    def take_all(self) -> list[tuple[int, T]]:
        """Remove and return everything, oldest first, as (priority, item)."""
        out = list(self._items)
        self._items.clear()
        return out

    def clear(self) -> int:
        """Discard everything; returns how many items were discarded."""
        n = len(self._items)
        self._items.clear()
        return n
