"""Session resources declared in a pipeline file: an S3 client, a MongoDB client, an SSH
connection, a Kubernetes API client; and the Dask client of a ``dask`` executor.

Each becomes a ``@session.resource`` of the pipeline's session, opened when the pipeline
runs (never when the file is loaded, checked or drawn). Credentials come from the
environment (``${ENV_VAR}``, resolved when the file is loaded) or from files; they are
passed to the client library and to nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from .._deps import require
from ..durations import parse_duration
from ..errors import BackendUnavailableError
from ..session import ResourceAccessor, Session

__all__ = ("RESOURCE_KINDS", "declare_resource", "declare_dask_client")


def _s3(settings: dict[str, Any]) -> Callable[[], AsyncIterator[Any]]:
    async def factory() -> AsyncIterator[Any]:
        session_module = require("aiobotocore.session", "s3")
        config_module = require("aiobotocore.config", "s3")
        session = session_module.AioSession(profile=settings.get("profile"))
        config = config_module.AioConfig(
            max_pool_connections=settings.get("max_pool_connections", 10),
            retries={"total_max_attempts": settings.get("max_attempts", 1)},
        )
        options = {
            "endpoint_url": settings.get("endpoint") or None,
            "region_name": settings.get("region") or "us-east-1",
            "aws_access_key_id": settings.get("access_key_id"),
            "aws_secret_access_key": settings.get("secret_access_key"),
            "aws_session_token": settings.get("session_token"),
        }
        async with session.create_client(
            "s3", config=config, **{k: v for k, v in options.items() if v is not None}
        ) as client:
            yield client

    return factory


def _mongo(settings: dict[str, Any]) -> Callable[[], AsyncIterator[Any]]:
    async def factory() -> AsyncIterator[Any]:
        pymongo = require("pymongo", "mongo")
        url = settings.get("url")
        if url is None:
            text = await asyncio.to_thread(Path(settings["url_file"]).read_text, encoding="utf-8")
            url = text.strip()
        timeout = parse_duration(settings.get("timeout", "10s"))
        client = pymongo.AsyncMongoClient(url, serverSelectionTimeoutMS=int(timeout * 1000))
        try:
            yield client
        finally:
            await client.close()

    return factory


def _ssh(settings: dict[str, Any]) -> Callable[[], AsyncIterator[Any]]:
    async def factory() -> AsyncIterator[Any]:
        asyncssh = require("asyncssh", "ssh")
        options: dict[str, Any] = {"port": settings.get("port", 22)}
        for name in ("username", "password", "client_keys"):
            if name in settings:
                options[name] = settings[name]
        if "known_hosts" in settings:
            options["known_hosts"] = settings["known_hosts"]
        async with asyncssh.connect(settings["host"], **options) as connection:
            yield connection

    return factory


def _kubernetes(settings: dict[str, Any]) -> Callable[[], AsyncIterator[Any]]:
    async def factory() -> AsyncIterator[Any]:
        from ..executor.pods import api_client

        async with api_client(
            settings.get("config_file"),
            context=settings.get("context"),
            in_cluster=bool(settings.get("in_cluster", False)),
        ) as api:
            yield api

    return factory


#: kind -> maker of the resource's async generator function
RESOURCE_KINDS: dict[str, Callable[[dict[str, Any]], Callable[[], AsyncIterator[Any]]]] = {
    "s3": _s3,
    "mongo": _mongo,
    "ssh": _ssh,
    "kubernetes": _kubernetes,
}


def declare_resource(session: Session, name: str, settings: dict[str, Any]) -> ResourceAccessor[Any]:
    """Declare the resource ``name`` of ``settings`` (with ``kind``) in ``session``."""
    factory = RESOURCE_KINDS[settings["kind"]](settings)
    factory.__name__ = name
    factory.__qualname__ = name
    return session.resource(factory)


def _close_when_made(made: asyncio.Future[Any]) -> None:
    if not made.cancelled() and made.exception() is None:
        threading.Thread(target=made.result().close, name="pydatatask-dask-close", daemon=True).start()


async def _in_thread(make: Callable[[], Any]) -> Any:
    """``make()`` in a thread (a Dask client blocks while it connects, a LocalCluster while
    its workers start); a client made after its opening was given up is closed."""
    made = asyncio.ensure_future(asyncio.to_thread(make))
    try:
        return await asyncio.shield(made)
    except asyncio.CancelledError:
        made.add_done_callback(_close_when_made)
        raise


def _dask(executor: str, settings: dict[str, Any]) -> Callable[[], AsyncIterator[Any]]:
    async def factory() -> AsyncIterator[Any]:
        distributed = require("distributed", "dask")
        options: dict[str, Any] = {"set_as_default": False}
        if "timeout" in settings:
            options["timeout"] = settings["timeout"]
        if "address" in settings:
            where = f"the Dask scheduler at {settings['address']}"
            make = functools.partial(distributed.Client, settings["address"], **options)
        else:
            where = "a local Dask cluster"
            local = {"dashboard_address": None, **settings.get("local", {})}
            make = functools.partial(distributed.Client, **local, **options)
        try:
            client = await _in_thread(make)
        except OSError as exc:  # distributed's connection timeouts are OSErrors too
            raise BackendUnavailableError(f"executor {executor!r}: cannot reach {where}: {exc}") from exc
        try:
            yield client
        finally:
            await asyncio.to_thread(client.close)

    return factory


def declare_dask_client(session: Session, executor: str, settings: dict[str, Any]) -> ResourceAccessor[Any]:
    """Declare the ``distributed.Client`` of the ``dask`` executor ``executor`` in
    ``session``, as the resource ``executors.NAME``: connected to ``settings["address"]``,
    or over a LocalCluster of ``settings["local"]`` (closed with the client), when the
    session opens. ``timeout`` (seconds) and the LocalCluster's ``memory_limit`` (bytes) are
    parsed already."""
    factory = _dask(executor, settings)
    factory.__name__ = factory.__qualname__ = f"executors.{executor}"
    return session.resource(factory)
