"""Session: async resources (clients, connections) opened together for a run.

::

    session = pydatatask.Session()

    @session.resource
    async def s3():
        async with aiobotocore.session.get_session().create_client("s3", ...) as client:
            yield client

    repo = S3BucketRepository(s3, "bucket")   # the accessor, resolved while the session is open
    async with session:
        client = s3()                          # the live client

Resources open in declaration order and close in reverse. If one fails to open, the
ones already open are closed and the error propagates. An exception raised inside
``async with session`` is thrown into each resource generator, as
:func:`contextlib.asynccontextmanager` does.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from .errors import SessionClosedError, SessionError

__all__ = ("Session", "ResourceAccessor", "resolve")

T = TypeVar("T")


def _is_factory(obj: object) -> bool:
    """A zero-argument factory written as code: a function, lambda, bound method or partial."""
    return inspect.isfunction(obj) or inspect.ismethod(obj) or isinstance(obj, functools.partial)


@overload
def resolve(obj: ResourceAccessor[T]) -> T: ...
@overload
def resolve(obj: Any) -> Any: ...
def resolve(obj: Any) -> Any:
    """The live object behind ``obj``, for backends that take "a client, or a way to get one".

    * a session accessor (what ``@session.resource`` returns) is called: the open resource;
    * a zero-argument factory written as a function, ``lambda``, bound method or
      ``functools.partial`` is called, and an accessor it returns is called in turn
      (``lambda: mongo()["db"]["coll"]``);
    * anything else is returned as it is, callable or not: a client object is never called
      (a pymongo collection, say, is callable only to explain that it is not a function).

    This is the one rule every backend and task setting that takes a client, a connection or
    a per-job value applies, at every use, so they can be built before the session opens.
    """
    if isinstance(obj, ResourceAccessor):
        return obj()
    if _is_factory(obj):
        made = obj()
        return made() if isinstance(made, ResourceAccessor) else made
    return obj


class ResourceAccessor(Generic[T]):
    """What ``@session.resource`` returns: call it to get the live resource."""

    def __init__(self, session: Session, name: str, factory: Callable[[], AsyncIterator[T]]) -> None:
        self.session = session
        self.name = name
        self.factory = factory

    def __call__(self) -> T:
        try:
            return self.session._values[self.name]  # type: ignore[no-any-return]
        except KeyError:
            raise SessionClosedError(
                f"session resource {self.name!r} is used while its session is not open; "
                "use it inside `async with session:` (or Pipeline.run, which opens it)"
            ) from None

    def __repr__(self) -> str:
        state = "open" if self.name in self.session._values else "closed"
        return f"<session resource {self.name} ({state})>"


class Session:
    """A set of async resources with one lifetime. Reusable: it can be reopened after close."""

    def __init__(self) -> None:
        self._factories: dict[str, Callable[[], AsyncIterator[Any]]] = {}
        self._values: dict[str, Any] = {}
        self._stack: AsyncExitStack | None = None

    def resource(self, factory: Callable[[], AsyncIterator[T]]) -> ResourceAccessor[T]:
        """Declare a resource: an async generator function that yields one live object."""
        name = getattr(factory, "__name__", f"resource{len(self._factories)}")
        if name in self._factories:
            raise SessionError(f"a session resource named {name!r} is already declared")
        if self._stack is not None:
            raise SessionError("cannot declare a resource while the session is open")
        self._factories[name] = factory
        return ResourceAccessor(self, name, factory)

    @property
    def is_open(self) -> bool:
        """Whether the session is currently open."""
        return self._stack is not None

    @property
    def resource_names(self) -> tuple[str, ...]:
        """Names of the declared resources, in opening order."""
        return tuple(self._factories)

    async def __aenter__(self) -> Session:
        if self._stack is not None:
            raise SessionError("the session is already open")
        stack = AsyncExitStack()
        try:
            for name, factory in self._factories.items():
                value = await stack.enter_async_context(_Resource(name, factory))
                self._values[name] = value
        except BaseException:
            self._values.clear()
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        self._values.clear()
        if stack is None:
            return None
        return await stack.__aexit__(exc_type, exc, tb)


class _Resource:
    """Drives one resource generator: first ``yield`` opens, the end closes."""

    def __init__(self, name: str, factory: Callable[[], AsyncIterator[Any]]) -> None:
        self.name = name
        self.factory = factory
        self.gen: AsyncGenerator[Any, None] | None = None

    async def __aenter__(self) -> Any:
        gen = self.factory()
        if not hasattr(gen, "asend"):
            raise SessionError(
                f"session resource {self.name!r} must be an async generator function that yields once"
            )
        self.gen = gen  # type: ignore[assignment]
        try:
            return await gen.__anext__()
        except StopAsyncIteration:
            raise SessionError(f"session resource {self.name!r} finished without yielding a value") from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        gen = self.gen
        assert gen is not None
        if exc is None:
            try:
                await gen.__anext__()
            except StopAsyncIteration:
                return False
            await gen.aclose()
            raise SessionError(f"session resource {self.name!r} yielded more than once")
        try:
            await gen.athrow(exc)
        except StopAsyncIteration:
            return True  # the generator swallowed the exception
        except BaseException as raised:
            if raised is exc:
                return False
            raise
        await gen.aclose()
        raise SessionError(f"session resource {self.name!r} yielded more than once")
