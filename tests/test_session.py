from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pydatatask import Session, SessionClosedError, SessionError


async def test_open_in_order_close_in_reverse() -> None:
    events: list[str] = []
    session = Session()

    @session.resource
    async def first() -> AsyncIterator[str]:
        events.append("open first")
        yield "one"
        events.append("close first")

    @session.resource
    async def second() -> AsyncIterator[str]:
        events.append("open second")
        yield first() + "+two"
        events.append("close second")

    with pytest.raises(SessionClosedError, match="first"):
        first()
    async with session:
        assert first() == "one"
        assert second() == "one+two"
    assert events == ["open first", "open second", "close second", "close first"]
    with pytest.raises(SessionClosedError):
        second()
    # reopen
    async with session:
        assert second() == "one+two"
    assert len(events) == 8


async def test_failure_while_opening_unwinds() -> None:
    events: list[str] = []
    session = Session()

    @session.resource
    async def ok() -> AsyncIterator[int]:
        events.append("open ok")
        try:
            yield 1
        finally:
            events.append("close ok")

    @session.resource
    async def broken() -> AsyncIterator[int]:
        raise ConnectionError("server down")
        yield 2  # pragma: no cover

    with pytest.raises(ConnectionError, match="server down"):
        async with session:
            pass  # pragma: no cover
    assert events == ["open ok", "close ok"]
    assert not session.is_open
    with pytest.raises(SessionClosedError):
        ok()


async def test_exception_in_body_reaches_resources() -> None:
    seen: list[BaseException] = []
    session = Session()

    @session.resource
    async def res() -> AsyncIterator[int]:
        try:
            yield 1
        except ValueError as exc:
            seen.append(exc)
            raise

    with pytest.raises(ValueError, match="body"):
        async with session:
            raise ValueError("body")
    assert len(seen) == 1


async def test_yield_twice_is_an_error() -> None:
    session = Session()

    @session.resource
    async def twice() -> AsyncIterator[int]:
        yield 1
        yield 2

    with pytest.raises(SessionError, match="more than once"):
        async with session:
            pass


async def test_no_yield_and_duplicates() -> None:
    session = Session()

    @session.resource
    async def empty() -> AsyncIterator[int]:
        return
        yield  # pragma: no cover

    with pytest.raises(SessionError, match="without yielding"):
        async with session:
            pass
    with pytest.raises(SessionError, match="already declared"):

        @session.resource
        async def empty() -> AsyncIterator[int]:  # noqa: F811
            yield 1
