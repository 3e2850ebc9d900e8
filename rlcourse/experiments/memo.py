"""The one memoisation mechanism of the experiments: results kept per process and per arguments.

A notebook that runs an experiment and then calls the figure builder pays for it once. Only
calls whose arguments are all hashable, and that pass no live objects (``model``,
``tokenizer``, ``task``), are memoised; :func:`clear_memo` forgets everything.
"""

from __future__ import annotations

import functools

_CACHES: list[dict] = []
_LIVE = ("model", "tokenizer", "task")


def _frozen(v):
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    return v


def memoised(fn):
    """Decorate an experiment so that a second call with the same arguments returns the same result."""
    cache: dict = {}
    _CACHES.append(cache)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if any(kwargs.get(k) is not None for k in _LIVE):
            return fn(*args, **kwargs)
        key = (_frozen(args), _frozen({k: v for k, v in kwargs.items() if k != "progress"}))
        try:
            hash(key)
        except TypeError:
            return fn(*args, **kwargs)
        if key not in cache:
            cache[key] = fn(*args, **kwargs)
        return cache[key]

    wrapper.cache = cache
    return wrapper


def clear_memo() -> None:
    """Forget every memoised experiment result of this process."""
    for cache in _CACHES:
        cache.clear()


__all__ = ["memoised", "clear_memo"]
