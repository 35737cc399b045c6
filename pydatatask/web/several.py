"""Several pipelines on one page: :class:`MultiWebServer` serves the list of the pipelines
at ``/`` (``/api/pipelines`` as JSON), the page, ``/api`` and ``/metrics`` of each under
``/p/NAME/`` (the application of one pipeline, :func:`~pydatatask.web.app.make_app`,
mounted as a sub-application) and at ``/metrics`` the metrics of all of them, every sample
with a ``pipeline`` label. Each pipeline keeps its own monitor, session and scheduler.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .server import DEFAULT_PORT, BaseWebServer
from .state import STATES, Monitor

if TYPE_CHECKING:
    from aiohttp import web

    from ..pipeline.pipeline import Pipeline

__all__ = ("MultiWebServer", "make_index_app", "page_names", "PAGE_PREFIX")

#: the prefix of the address of each pipeline's page (``/p/NAME/``)
PAGE_PREFIX = "/p/"
_NAME = re.compile(r"[A-Za-z0-9_~:-][A-Za-z0-9._~:-]*")
_NOT_NAME = re.compile(r"[^A-Za-z0-9._~:-]+")
_STATIC = {"pipelines.js": "text/javascript", "style.css": "text/css", "pipelines.html": "text/html"}


def page_names(labels: Sequence[str]) -> list[str]:
    """Names for the pages of the pipelines labelled ``labels`` (a file's stem, a ``-m``
    target), in order: a run of characters other than letters, digits and ``. _ ~ : -``
    becomes ``-``, and a name already given gets ``-2``, ``-3``, ... (``pipeline``,
    ``pipeline-2`` for two files named ``pipeline.yaml``)."""
    names: list[str] = []
    for label in labels:
        base = _NOT_NAME.sub("-", label).strip("-.") or "pipeline"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def _static(name: str) -> web.Response:
    from .app import static_response

    return static_response(name, _STATIC[name])


def make_index_app(
    pipelines: Mapping[str, Pipeline],
    monitors: Mapping[str, Monitor],
    *,
    allow_actions: bool = False,
    token: str | None = None,
    events_interval: float = 1.0,
) -> web.Application:
    """The application serving several pipelines (``pipelines`` and ``monitors`` by name;
    their sessions open while it serves): the list at ``/``, each pipeline under
    ``/p/NAME/``, every pipeline's metrics at ``/metrics``."""
    from aiohttp import web

    from .app import make_app, metrics_part, static_handler
    from .prometheus import CONTENT_TYPE, render_parts

    app = web.Application()

    async def index(request: web.Request) -> web.Response:
        return _static("pipelines.html")

    static = static_handler(_STATIC, "pipelines.html")

    async def listing(request: web.Request) -> web.Response:
        rows: list[dict[str, Any]] = []
        seen: dict[str, None] = dict.fromkeys(STATES)
        for name, monitor in monitors.items():
            tasks = await monitor.counts()
            total: dict[str, int] = {}
            for counts in tasks.values():
                for state, n in counts.items():
                    total[state] = total.get(state, 0) + n
            seen.update(dict.fromkeys(total))
            source = (
                "scheduler" if monitor.scheduler is not None else "starting" if monitor.live else "listing"
            )
            rows.append(
                {
                    "name": name,
                    "url": f"{PAGE_PREFIX.lstrip('/')}{name}/",
                    "source": source,
                    "counts": total,
                    "tasks": tasks,
                }
            )
        return web.json_response({"states": list(seen), "pipelines": rows})

    async def metrics(request: web.Request) -> web.Response:
        parts = [await metrics_part(monitor, pipeline=name) for name, monitor in monitors.items()]
        return web.Response(body=render_parts(parts).encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})

    async def to_page(request: web.Request) -> web.Response:
        # the page's addresses are relative to it: it must be asked for with its final /
        query = request.rel_url.raw_query_string
        raise web.HTTPFound(request.rel_url.raw_path + "/" + (f"?{query}" if query else ""))

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/pipelines", listing)
    app.router.add_get("/metrics", metrics)
    for name in pipelines:  # before the sub-applications, which would answer 404
        app.router.add_get(f"{PAGE_PREFIX}{name}", to_page)
    for name, pipeline in pipelines.items():
        sub = make_app(
            pipeline,
            monitors[name],
            allow_actions=allow_actions,
            token=token,
            events_interval=events_interval,
            name=name,
        )
        app.add_subapp(f"{PAGE_PREFIX}{name}/", sub)
    return app


class MultiWebServer(BaseWebServer):
    """Serves several pipelines on one port while open, named by ``pipelines``' keys::

        async with MultiWebServer({"images": images, "reports": reports}, port=8080) as server:
            print(server.url)        # the list; each page at /p/NAME/
            await asyncio.gather(images.run(), reports.run())

    The options are those of :class:`~pydatatask.web.server.WebServer`, for every
    pipeline (``live=True`` as ``run --serve``; one token for all the actions). A name is
    made of letters, digits and ``. _ ~ : -`` (:func:`page_names` makes such names).
    """

    def __init__(
        self,
        pipelines: Mapping[str, Pipeline],
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        live: bool = False,
        allow_actions: bool = False,
        token: str | None = None,
        interval: float = 1.0,
    ) -> None:
        if not pipelines:
            raise ConfigurationError("MultiWebServer needs at least one pipeline")
        for name in pipelines:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ConfigurationError(
                    f"{name!r} cannot name the page of a pipeline: use letters, digits and . _ ~ : - "
                    "(not first: .)"
                )
        super().__init__(list(pipelines.values()), host, port, live, allow_actions, token, interval)
        self.pipelines = dict(pipelines)
        #: what the pages show of the pipelines, by name
        self.monitors = dict(zip(self.pipelines, self._monitor_list, strict=True))

    def page_url(self, name: str) -> str:
        """Where the page of the pipeline ``name`` is."""
        base, _, fragment = self.url.partition("#")
        return f"{base}{PAGE_PREFIX.lstrip('/')}{name}/" + (f"#{fragment}" if fragment else "")

    def _app(self) -> web.Application:
        return make_index_app(self.pipelines, self.monitors, **self._app_options())

    def _serving(self) -> str:
        return f"the pages of {len(self.pipelines)} pipelines"
