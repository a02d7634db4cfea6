"""The server's cache of constructed mechanisms, bounded in bytes as well as in entries.

A mechanism's size is what :meth:`memory_usage` reports it holds (weights and cached arrays), measured
when it enters the cache and again each time it is used (a mechanism may keep the attention weights of
its last forward pass). Least recently used entries are dropped until both bounds hold; a mechanism
larger than the whole byte budget is handed out but never kept.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable
from typing import Any

__all__ = ["MechanismCache", "held_bytes"]


def held_bytes(mech: Any) -> int:
    """Bytes of the arrays ``mech`` holds (0 when it cannot tell)."""
    try:
        return max(0, int(mech.memory_usage().heap_used))
    except Exception:  # noqa: BLE001 - a mechanism without memory_usage, or a disposed one
        return 0


class MechanismCache:
    """LRU map ``key -> mechanism`` holding at most ``max_entries`` entries and ``max_bytes`` bytes."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._items: collections.OrderedDict[Hashable, tuple[Any, int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, mech: Any) -> None:
        size = held_bytes(mech)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size <= self.max_bytes:
                self._items[key] = (mech, size)
                self._bytes += size
            self._evict()

    def refresh(self, key: Hashable) -> None:
        """Measure the entry ``key`` again (after a forward pass that may have cached arrays)."""
        with self._lock:
            found = self._items.get(key)
        if found is None:
            return
        size = held_bytes(found[0])
        with self._lock:
            current = self._items.get(key)
            if current is None or current[0] is not found[0]:
                return
            self._bytes += size - current[1]
            self._items[key] = (current[0], size)
            if size > self.max_bytes:
                self._bytes -= size
                del self._items[key]
            self._evict()

    def _evict(self) -> None:
        while self._items and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
            _, (_, size) = self._items.popitem(last=False)
            self._bytes -= size
