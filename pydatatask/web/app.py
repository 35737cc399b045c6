"""The HTTP application: the page, ``/api/...`` (JSON), ``/api/events`` (server-sent
events) and ``/metrics``. See ``docs/web.rst`` for the reference.

Read-only unless made with ``allow_actions``; then ``POST /api/actions/...`` redo keys
(remove their outputs and records, so they run again), stop launching and resume. An
action must carry the header ``X-Pydatatask-Action`` (a page of another site cannot send
it without the browser asking this server first, which it never allows) and, when a token
is set, ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import CorruptValueError, InvalidKeyError, KeyNotFoundError
from ..keys import validate_key
from ..pipeline.record_index import corrupt_info
from ..task.links import LinkKind
from .graph import graph_svg
from .live_log import NO_LIVE_LOG, as_sse, live_log_events
from .prometheus import CONTENT_TYPE, MetricsPart, render_parts
from .state import MAX_PAGE, Monitor

if TYPE_CHECKING:
    from ..pipeline.pipeline import Pipeline
    from ..task.base import Task

__all__ = ("make_app", "metrics_part", "static_response", "static_handler", "ACTION_HEADER", "LOG_TAIL")

#: the header every action must carry
ACTION_HEADER = "X-Pydatatask-Action"
#: bytes of a log sent by default (its end)
LOG_TAIL = 64 * 1024

#: a request handler
Handler = Callable[[web.Request], Awaitable[web.Response]]

_MONITOR = web.AppKey("monitor", Monitor)
_CLOSING = web.AppKey("closing", asyncio.Event)
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}


class _BadRequest(Exception):
    """A request this server refuses, with its status and one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(value: Any, status: int = 200) -> web.Response:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return web.Response(text=text, status=status, content_type="application/json")


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except _BadRequest as exc:
        return _json({"error": str(exc)}, exc.status)


def make_app(
    pipeline: Pipeline,
    monitor: Monitor,
    *,
    allow_actions: bool = False,
    token: str | None = None,
    events_interval: float = 1.0,
    name: str | None = None,
) -> web.Application:
    """The application serving ``pipeline`` (whose session must be open while it serves).

    ``name`` is the pipeline's name when it is one of several served together (its page
    then shows the name and links to the list of pipelines, two levels up: the page is
    served at ``/p/NAME/``); every address the page asks for is relative to the page's own.
    """
    app = web.Application(middlewares=[_errors])
    app[_MONITOR] = monitor
    app[_CLOSING] = asyncio.Event()

    async def on_shutdown(app: web.Application) -> None:
        app[_CLOSING].set()  # ends the event streams

    app.on_shutdown.append(on_shutdown)

    def task_of(request: web.Request) -> Task:
        name = request.query.get("task", "")
        if name not in pipeline.tasks:
            raise _BadRequest(404, f"no task named {name!r}; tasks: {', '.join(pipeline.tasks)}")
        return pipeline.tasks[name]

    def key_of(request: web.Request) -> str:
        try:
            return validate_key(request.query.get("key", ""))
        except InvalidKeyError as exc:
            raise _BadRequest(400, str(exc)) from None

    def number(request: web.Request, name: str, default: int, low: int, high: int) -> int:
        text = request.query.get(name)
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            raise _BadRequest(400, f"{name}={text!r} is not a whole number") from None
        if not low <= value <= high:
            raise _BadRequest(400, f"{name}={value} is outside {low}..{high}")
        return value

    # ---------------------------------------------------------------- the page
    async def page(request: web.Request) -> web.Response:
        settings: dict[str, Any] = {"allow_actions": allow_actions, "token_required": token is not None}
        if name is not None:
            settings.update(name=name, index="../../")
        return static_file("index.html", settings)

    def static_file(name: str, settings: dict[str, Any] | None = None) -> web.Response:
        return static_response(name, _STATIC[name], settings)

    static = static_handler(_STATIC, "index.html")

    async def svg(request: web.Request) -> web.Response:
        return web.Response(text=graph_svg(pipeline.graph.drawing()), content_type="image/svg+xml")

    # ---------------------------------------------------------------- the API
    async def status(request: web.Request) -> web.Response:
        body = await monitor.status()
        body["actions"] = allow_actions
        body["paused"] = bool(getattr(monitor.scheduler, "paused", False))
        return _json(body)

    async def keys(request: web.Request) -> web.Response:
        task = task_of(request)
        snap = await monitor.snapshot()
        state = request.query.get("state", "ready")
        states = snap.states()
        if state not in states:
            raise _BadRequest(400, f"no state {state!r}; states: {', '.join(states)}")
        page = snap.tasks[task.name].page(
            state,
            request.query.get("q", ""),
            number(request, "offset", 0, 0, 1 << 40),
            number(request, "limit", 100, 1, MAX_PAGE),
        )
        return _json({"task": task.name, "taken_at": snap.taken_at, **page})

    async def job(request: web.Request) -> web.Response:
        task, key = task_of(request), key_of(request)
        snap = await monitor.snapshot()
        body: dict[str, Any] = {"task": task.name, "key": key, "state": snap.tasks[task.name].state_of(key)}
        for field, repo in (("record", task.done), ("claim", task.live)):
            try:
                body[field] = await repo.get(key)
            except KeyNotFoundError:
                body[field] = None
            except CorruptValueError as exc:
                body[field] = None
                body.setdefault("corrupt", []).append(corrupt_info(field, exc))
        body["links"] = await _links(pipeline, task, key)
        body["has_log"] = task.logs is not None and await task.logs.contains(key)
        # under way in this process: GET /api/log/live streams its log
        body["live_log"] = key in task.running_jobs
        return _json(body)

    async def log(request: web.Request) -> web.Response:
        task, key = task_of(request), key_of(request)
        tail = number(request, "tail", LOG_TAIL, 1, 64 * 1024 * 1024)
        if task.logs is None:
            raise _BadRequest(404, f"task {task.name!r} has no logs repository")
        try:
            data = await task.logs.read_bytes(key)
        except KeyNotFoundError:
            if key in task.running_jobs:
                why = "its job is running here; the log is stored when it ends (GET /api/log/live streams it)"
            elif await task.live.contains(key):
                why = f"its job is running; the log is stored when it ends; {NO_LIVE_LOG}"
            else:
                why = "no log stored"
            return _json({"task": task.name, "key": key, "size": 0, "text": None, "why": why})
        cut = max(0, len(data) - tail)
        text = data[cut:].decode("utf-8", "replace")
        return _json({"task": task.name, "key": key, "size": len(data), "offset": cut, "text": text})

    async def live_log(request: web.Request) -> web.StreamResponse:
        task, key = task_of(request), key_of(request)
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        async for event in live_log_events(task, key, request.app[_CLOSING]):
            await response.write(as_sse(event))
        return response

    async def failures(request: web.Request) -> web.Response:
        limit = number(request, "limit", 50, 1, 1000)
        return _json({"failures": await monitor.failures(limit)})

    async def graph(request: web.Request) -> web.Response:
        from dataclasses import asdict

        drawing = pipeline.graph.drawing().as_dict()
        drawing["dependencies"] = [asdict(e) for e in pipeline.graph.edges]
        return _json(drawing)

    async def metrics(request: web.Request) -> web.Response:
        text = render_parts([await metrics_part(monitor)])
        return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        closing = request.app[_CLOSING]
        last: object = ()
        failed = -1
        while not closing.is_set():
            version = monitor.version()
            if version != last or monitor.scheduler is None:
                counts = await monitor.counts()
                version = monitor.version()
                if version != last:
                    last = version
                    total_failed = sum(c.get("failed", 0) for c in counts.values())
                    s = monitor.scheduler
                    payload = {
                        "counts": counts,
                        "running_here": s is not None,
                        "paused": bool(getattr(s, "paused", False)),
                        "failures_changed": total_failed != failed,
                    }
                    failed = total_failed
                    await response.write(f"data: {json.dumps(payload)}\n\n".encode())
            try:
                async with asyncio.timeout(events_interval):
                    await closing.wait()
            except TimeoutError:
                pass
        return response

    # ---------------------------------------------------------------- actions
    async def action(request: web.Request) -> web.Response:
        if not allow_actions:
            raise _BadRequest(403, "actions are off: start the server with --allow-actions")
        if ACTION_HEADER not in request.headers:
            raise _BadRequest(403, f"an action needs the header {ACTION_HEADER}")
        if token is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise _BadRequest(401, "wrong or missing token (Authorization: Bearer TOKEN)")
        try:
            body = await request.json()
        except ValueError:
            raise _BadRequest(400, "the body of an action is a JSON object") from None
        if not isinstance(body, dict):
            raise _BadRequest(400, "the body of an action is a JSON object")
        from .actions import ActionError, run_action

        try:
            result = await run_action(pipeline, monitor, request.match_info["name"], body)
        except ActionError as exc:
            raise _BadRequest(exc.status, str(exc)) from None
        return _json(result)

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/graph.svg", svg)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/keys", keys)
    app.router.add_get("/api/job", job)
    app.router.add_get("/api/log", log)
    app.router.add_get("/api/log/live", live_log)
    app.router.add_get("/api/failures", failures)
    app.router.add_get("/api/graph", graph)
    app.router.add_get("/api/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/actions/{name}", action)
    return app


def static_handler(files: Mapping[str, str], page: str) -> Handler:
    """The handler of ``/static/{name}``: the files named in ``files`` (name -> content
    type) but ``page``, served at its own address."""

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files or name == page:
            raise web.HTTPNotFound()
        return static_response(name, files[name])

    return static


def static_response(name: str, content_type: str, settings: dict[str, Any] | None = None) -> web.Response:
    """The file ``name`` of the page (in ``static/``), never cached without asking again;
    ``settings`` replace its ``{{settings}}`` (as JSON that cannot end a script element)."""
    text = resources.files(__package__).joinpath("static", name).read_text("utf-8")
    if settings is not None:
        text = text.replace("{{settings}}", json.dumps(settings).replace("<", "\\u003c"))
    return web.Response(
        text=text,
        content_type=content_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def _links(pipeline: Pipeline, task: Task, key: str) -> list[dict[str, Any]]:
    """The input and output links of ``task`` for ``key``: the repository, whether the key
    is there, and the tasks upstream (writing it) or downstream (reading it)."""
    out: list[dict[str, Any]] = []
    for link in task.links.values():
        if link.kind not in (LinkKind.INPUT, LinkKind.OUTPUT) and not link.required_for_start:
            continue
        try:
            present: bool | None = await link.repository.contains(key)
        except InvalidKeyError:
            present = None  # a key this backend cannot hold
        if link.required_for_start:
            related = [
                e.upstream
                for e in pipeline.graph.edges
                if e.downstream == task.name and e.in_link == link.name
            ]
        else:
            related = [
                e.downstream
                for e in pipeline.graph.edges
                if e.upstream == task.name and e.out_link == link.name
            ]
        out.append(
            {
                "link": link.name,
                "kind": "input" if link.required_for_start else "output",
                "repository": link.repository.describe(),
                "present": present,
                "tasks": sorted(set(related)),
            }
        )
    return out


async def metrics_part(monitor: Monitor, **labels: str) -> MetricsPart:
    """What ``/metrics`` shows of the pipeline of ``monitor``: from the run going on in this
    process when there is one, else from the monitor's own listings."""
    counts = await monitor.counts()
    s = monitor.scheduler
    if s is not None:
        queues = {task: len(q) for task, q in s.queues.items()}
        return MetricsPart(counts, s.metrics, s.metrics.listings, queues, labels)
    return MetricsPart(counts, None, monitor.listings, None, labels)
