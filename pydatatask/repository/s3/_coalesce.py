"""Concurrent single-key requests joined into bulk ones (group commit).

Many jobs ending at once each ask about one object: is its record there, drop its claim.
Sent one by one, that is one request (about 1.5 ms of client CPU with aiobotocore) per
job. A :class:`Coalescer` sends the first caller's key at once; callers arriving while that
request is under way wait, and their keys go together in the next request (a
``DeleteObjects`` of up to 1,000 names, one listing page). A lone caller waits for nothing;
under load, requests carry as many keys as arrived meanwhile.

Each call's answer comes from a request sent after the call began, so a coalesced call
means what a single request made at that moment would: ``contains`` never answers from a
listing older than the call, a ``delete`` has happened when it returns.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from ...errors import RepositoryError

__all__ = ("Coalescer",)

R = TypeVar("R")

#: ``send(keys)``: for each key its answer, or the exception that key's caller gets
Send = Callable[[list[str]], Awaitable[dict[str, "R | BaseException"]]]


class _State(Generic[R]):
    __slots__ = ("pending", "sender")

    def __init__(self) -> None:
        self.pending: dict[str, list[asyncio.Future[R]]] = {}
        self.sender: asyncio.Task[None] | None = None


class Coalescer(Generic[R]):
    """Joins concurrent calls ``await coalescer(key)`` into calls of ``send(keys)`` of at
    most ``limit`` keys, one in flight at a time per event loop.

    ``send`` answers every key it is given (a missing answer is an error for that caller);
    an exception out of ``send`` as a whole goes to every caller of that batch.
    """

    def __init__(self, send: Send[R], limit: int) -> None:
        self._send = send
        self._limit = limit
        # per event loop: a repository may be used from several loops (one per thread)
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _State[R]] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, key: str) -> R:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _State()
        future: asyncio.Future[R] = loop.create_future()
        state.pending.setdefault(key, []).append(future)
        if state.sender is None:
            # a task of its own, so that a caller cancelled meanwhile never strands the others
            state.sender = loop.create_task(self._drain(state))
        return await future

    async def _drain(self, state: _State[R]) -> None:
        try:
            while state.pending:
                keys = list(state.pending)[: self._limit]
                waiting = {k: state.pending.pop(k) for k in keys}
                try:
                    answers = await self._send(keys)
                except asyncio.CancelledError:
                    _settle(waiting, {}, asyncio.CancelledError())
                    raise
                except Exception as exc:
                    _settle(waiting, {}, exc)
                    continue
                _settle(waiting, answers, None)
        except asyncio.CancelledError:
            for futures in state.pending.values():  # the loop is shutting down
                for future in futures:
                    future.cancel()
            state.pending.clear()
            raise
        finally:
            state.sender = None


def _settle(
    waiting: dict[str, list[asyncio.Future[R]]],
    answers: dict[str, R | BaseException],
    error: BaseException | None,
) -> None:
    for key, futures in waiting.items():
        answer: R | BaseException
        if error is not None:
            answer = error
        elif key in answers:
            answer = answers[key]
        else:
            answer = RepositoryError(f"a bulk request gave no answer for the key {key!r}")
        for future in futures:
            if future.done():  # its caller was cancelled
                continue
            if isinstance(answer, asyncio.CancelledError):
                future.cancel()
            elif isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
