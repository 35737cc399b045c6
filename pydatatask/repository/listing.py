"""One listing per repository per scheduler tick.

Inside ``with listing_scope():`` the first ``cached_keys(repo)`` lists ``repo`` and every
later call (from another task, or from a view over it) reuses that result.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from .base import Repository

__all__ = ("listing_scope", "cached_keys")

_scope: contextvars.ContextVar[dict[int, asyncio.Future[set[str]]] | None] = contextvars.ContextVar(
    "pydatatask_listing_scope", default=None
)


@contextmanager
def listing_scope() -> Iterator[dict[int, asyncio.Future[set[str]]]]:
    """Share listings made inside the block."""
    cache: dict[int, asyncio.Future[set[str]]] = {}
    token = _scope.set(cache)
    try:
        yield cache
    finally:
        _scope.reset(token)


async def cached_keys(repo: Repository) -> set[str]:
    """``await repo.keys()``, shared within the current :func:`listing_scope`.

    The set returned is shared: callers must not modify it.
    """
    cache = _scope.get()
    if cache is None:
        return await repo.keys()
    fut = cache.get(id(repo))
    if fut is not None:
        return await asyncio.shield(fut)
    fut = asyncio.get_running_loop().create_future()
    cache[id(repo)] = fut
    try:
        result = await repo.keys()
    except BaseException as exc:
        del cache[id(repo)]
        if isinstance(exc, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(exc)
            fut.exception()  # waiters get it; nobody waiting is fine too
        raise
    fut.set_result(result)
    return result
