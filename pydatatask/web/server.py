"""Serving the page: :class:`WebServer`, an async context manager around aiohttp's server."""

from __future__ import annotations

import abc
import contextlib
import ipaddress
import logging
import secrets
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .._deps import require
from ..errors import ConfigurationError
from .state import Monitor

if TYPE_CHECKING:
    from aiohttp import web

    from ..pipeline.pipeline import Pipeline

__all__ = ("WebServer", "BaseWebServer", "parse_address", "is_loopback", "DEFAULT_PORT")

log = logging.getLogger("pydatatask.web")

DEFAULT_PORT = 8080


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"[HOST:]PORT"`` as ``(host, port)``; ``"[::1]:8080"`` for an IPv6 host."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.removeprefix("[").removesuffix("]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise ConfigurationError(f"{text!r} is not [HOST:]PORT (the port is not a number)") from None
    if not 0 <= number <= 65535:
        raise ConfigurationError(f"{text!r}: port {number} is outside 0..65535")
    return host, number


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, ``127.x``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BaseWebServer(abc.ABC):
    """What :class:`WebServer` (one pipeline) and
    :class:`~pydatatask.web.several.MultiWebServer` (several) share: the address, the token
    of actions, and the sessions of the pipelines, held open while serving (opened in
    order, closed in reverse, those open closed again when one fails to open)."""

    def __init__(
        self,
        pipelines: Sequence[Pipeline],
        host: str,
        port: int,
        live: bool,
        allow_actions: bool,
        token: str | None,
        interval: float,
    ) -> None:
        #: the address bound
        self.host = host
        #: the port (the one the system picked, once open, when given 0)
        self.port = port
        self.allow_actions = allow_actions
        if allow_actions and token is None and not is_loopback(host):
            token = secrets.token_urlsafe(24)
        #: the token actions need (``None``: none needed, or no actions)
        self.token = token if allow_actions else None
        #: seconds between snapshots, and between checks of the live updates
        self.interval = interval
        self._pipelines = list(pipelines)
        # one per pipeline, in order
        self._monitor_list = [Monitor(p, interval=interval, live=live) for p in self._pipelines]
        self._runner: web.AppRunner | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        """Where the page is (with ``#token=...`` when actions need a token)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        fragment = f"#token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{fragment}"

    @abc.abstractmethod
    def _app(self) -> web.Application:
        """The application served."""

    def _app_options(self) -> dict[str, Any]:
        """The options of :func:`~pydatatask.web.app.make_app` the server was given."""
        return {"allow_actions": self.allow_actions, "token": self.token, "events_interval": self.interval}

    @abc.abstractmethod
    def _serving(self) -> str:
        """What is served, for the line logged once the server is up."""

    async def __aenter__(self) -> Self:
        await self._start()
        log.info("serving %s at %s", self._serving(), self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop(exc_type, exc, tb)

    async def _start(self) -> None:
        web = require("aiohttp.web", "web")
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            for pipeline in self._pipelines:
                await stack.enter_async_context(pipeline)
            runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            try:
                site = web.TCPSite(runner, self.host, self.port)
                await site.start()
            except OSError as exc:
                await runner.cleanup()
                raise ConfigurationError(
                    f"cannot serve on {self.host}:{self.port}: {exc.strerror or exc}"
                ) from exc
            self._runner = runner
            if self.port == 0 and runner.addresses:  # the port the system picked
                self.port = int(runner.addresses[0][1])
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack

    async def _stop(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        try:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            for monitor in self._monitor_list:
                await monitor.aclose()
        finally:
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)


class WebServer(BaseWebServer):
    """Serves the page, ``/api`` and ``/metrics`` of ``pipeline`` while open::

        async with WebServer(pipeline, port=8080) as server:
            print(server.url)
            await pipeline.run()     # the page shows the run's live state

    It holds the pipeline's session open. ``live=True`` (as ``run --serve``) shows only
    the state of a run in this process, never listing on its own. Actions need
    ``allow_actions``; bound to an address other than loopback they also need a token,
    made up here when not given (``token``, shown in :attr:`~BaseWebServer.url`).
    Several pipelines on one page: :class:`~pydatatask.web.several.MultiWebServer`.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        live: bool = False,
        allow_actions: bool = False,
        token: str | None = None,
        interval: float = 1.0,
    ) -> None:
        super().__init__([pipeline], host, port, live, allow_actions, token, interval)
        self.pipeline = pipeline
        #: what the page shows of the pipeline
        self.monitor = self._monitor_list[0]

    def _app(self) -> web.Application:
        from .app import make_app

        return make_app(self.pipeline, self.monitor, **self._app_options())

    def _serving(self) -> str:
        return "the page of the pipeline"
