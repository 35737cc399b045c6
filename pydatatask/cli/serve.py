"""``serve``, ``run --serve`` and ``--allow-actions``: the command line of the web page
(``pydatatask.web``, imported only when asked for)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..pipeline.pipeline import Pipeline
    from ..web.server import WebServer
    from ..web.several import MultiWebServer

__all__ = ("add_serve_parser", "add_run_options", "cmd_serve", "serving", "TOKEN_ENV")

log = logging.getLogger("pydatatask.cli")

#: the environment variable holding the token of actions (never on the command line)
TOKEN_ENV = "PYDATATASK_WEB_TOKEN"


def _address(text: str) -> tuple[str, int]:
    from ..web.server import parse_address

    try:
        return parse_address(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0..65535")
    return port


def _actions_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-actions",
        action="store_true",
        help=f"let the page redo keys, stop and resume launching (a token, from ${TOKEN_ENV} or made up, "
        "is needed off loopback)",
    )


def add_serve_parser(p: argparse.ArgumentParser) -> None:
    """The options of ``serve``."""
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0: any free port)")
    _actions_option(p)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``run --serve [HOST:]PORT`` and ``--allow-actions``."""
    p.add_argument(
        "--serve",
        type=_address,
        metavar="[HOST:]PORT",
        help="serve the page of this run (host 127.0.0.1 unless given)",
    )
    _actions_option(p)


def _server(
    pipelines: Pipeline | Mapping[str, Pipeline], host: str, port: int, allow_actions: bool, live: bool
) -> WebServer | MultiWebServer:
    token = os.environ.get(TOKEN_ENV) or None
    if isinstance(pipelines, Mapping):  # several, by name: one page each and the list of them
        from ..web.several import MultiWebServer

        return MultiWebServer(
            pipelines, host=host, port=port, live=live, allow_actions=allow_actions, token=token
        )
    from ..web.server import WebServer

    return WebServer(pipelines, host=host, port=port, live=live, allow_actions=allow_actions, token=token)


def _announce(server: WebServer | MultiWebServer) -> None:
    from ..web.several import MultiWebServer

    also = ""
    if isinstance(server, MultiWebServer):
        also = f" (pipelines: {', '.join(server.pipelines)}; each at /p/NAME/)"
    sys.stderr.write(f"serving the page at {server.url}{also}\n")
    sys.stderr.flush()


@contextlib.asynccontextmanager
async def serving(
    pipeline: Pipeline | Mapping[str, Pipeline], args: argparse.Namespace
) -> AsyncIterator[None]:
    """Around ``run``: the page of the run while it goes on, when ``--serve`` was given
    (of several runs by name: the list of them and a page each)."""
    if args.serve is None:
        yield
        return
    host, port = args.serve
    server = _server(pipeline, host, port, args.allow_actions, live=True)
    async with server:
        _announce(server)
        yield


async def cmd_serve(pipeline: Pipeline | Mapping[str, Pipeline], args: argparse.Namespace) -> int:
    """``serve``: the page of the pipeline's repositories (of several pipelines by name: the
    list of them and a page each), until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    got: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        got.append(signum)
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, int(sig))
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
            pass
    try:
        server = _server(pipeline, args.host, args.port, args.allow_actions, live=False)
        async with server:
            _announce(server)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return 128 + got[0] if got else 0
