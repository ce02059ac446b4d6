"""A tiny bounded-dict helper shared by the per-process caches of this package."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(cache: dict[K, V], key: K, value: V, limit: int) -> None:
    """Insert ``key`` into ``cache``, evicting the oldest entry (insertion order) when full.

    Why not functools.lru_cache: we need to cache only successful parses (errors must be raised
    every time) and to keep the hit path a plain dict lookup. A concurrent eviction race only
    costs a recomputation, so a failed eviction clears the cache instead of raising.
    """
    if len(cache) >= limit:
        try:
            del cache[next(iter(cache))]
        except (StopIteration, KeyError, RuntimeError):
            cache.clear()
    cache[key] = value
