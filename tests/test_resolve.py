"""The one rule for "a client, or a way to get one": :func:`pydatatask.session.resolve`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest

from pydatatask import SessionClosedError
from pydatatask.session import ResourceAccessor, Session, resolve


class Client:
    """Stands for a client object; callable like a pymongo collection, which must not be called."""

    def __call__(self) -> None:
        raise AssertionError("a client object was called as a factory")


async def test_an_accessor_is_called_while_its_session_is_open() -> None:
    session = Session()
    client = Client()

    @session.resource
    async def res() -> AsyncIterator[Client]:
        yield client

    assert isinstance(res, ResourceAccessor)
    with pytest.raises(SessionClosedError, match="res"):
        resolve(res)
    async with session:
        assert resolve(res) is client


def test_factories_written_as_functions_are_called() -> None:
    client = Client()

    def factory() -> Client:
        return client

    class Holder:
        def get(self) -> Client:
            return client

    assert resolve(factory) is client
    assert resolve(lambda: client) is client
    assert resolve(Holder().get) is client  # a bound method
    assert resolve(functools.partial(dict, a=1)) == {"a": 1}


async def test_a_factory_returning_an_accessor_reaches_the_resource() -> None:
    session = Session()

    @session.resource
    async def db() -> AsyncIterator[dict[str, str]]:
        yield {"coll": "the collection"}

    async with session:
        assert resolve(lambda: db()["coll"]) == "the collection"
        assert resolve(lambda: db) == {"coll": "the collection"}


def test_values_are_returned_as_they_are_even_when_callable() -> None:
    client = Client()
    assert resolve(client) is client
    assert resolve("token") == "token"
    assert resolve(3) == 3
    assert resolve(Client) is Client  # a class is a value, not a factory
    assert resolve(None) is None
