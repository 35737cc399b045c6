"""From the checked values of a pipeline file to the objects of the Python API.

Each section becomes what a script would build: resources become ``@session.resource``
accessors of one :class:`~pydatatask.session.Session`; repositories, executors and tasks
are made by name, in any order of the file (a repository naming another is built after
it; a cycle is an error); an error of a constructor is reported at the place in the file
of what it was building.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, PipelineFileError
from ..session import ResourceAccessor, Session
from ._document import Document, Path_
from ._environment import import_object
from ._resources import declare_dask_client, declare_resource

__all__ = ("Builder",)


class Builder:
    """Builds the pipeline of one checked, interpolated document."""

    def __init__(self, doc: Document, values: dict[str, Any], secrets: set[str]) -> None:
        self.doc = doc
        self.values = values
        self.secrets = secrets
        self.session = Session()
        self.resources: dict[str, ResourceAccessor[Any]] = {}
        self.repositories: dict[str, Any] = {}
        self.executors: dict[str, Any] = {}
        self._building: list[str] = []

    # ---------------------------------------------------------------- helpers
    def error(self, path: Path_, problem: str, *, key: bool = False) -> PipelineFileError:
        """An error at ``path`` whose message holds no value taken from the environment."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= 3:
                problem = problem.replace(secret, "***")
        return self.doc.error(path, problem, key=key)

    def path(self, text: str) -> Path:
        """A path of the file: relative to the file's folder, ``~`` expanded."""
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.doc.directory / p

    def call(self, path: Path_, make: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``make(*args, **kwargs)``; a configuration error is reported at ``path``."""
        try:
            return make(*args, **kwargs)
        except PipelineFileError:
            raise
        except (ConfigurationError, ValueError, TypeError) as exc:
            raise self.error(path, str(exc), key=True) from exc

    def obj(self, path: Path_, dotted: str) -> Any:
        return import_object(self.doc, path, dotted)

    def resource(self, path: Path_, name: str, kind: str) -> ResourceAccessor[Any]:
        spec = self.values.get("resources", {}).get(name)
        if spec is None:
            known = ", ".join(self.values.get("resources", {})) or "none"
            raise self.error(path, f"no resource named {name!r} (resources: {known})")
        if spec["kind"] != kind:
            raise self.error(path, f"resource {name!r} is a {spec['kind']} resource, expected {kind}")
        return self.resources[name]

    # ---------------------------------------------------------------- resources
    def build_resources(self) -> None:
        for name, spec in self.values.get("resources", {}).items():
            self.resources[name] = declare_resource(self.session, name, spec)

    # ---------------------------------------------------------------- repositories
    def repository(self, path: Path_, name: str) -> Any:
        """The repository ``name`` (built on first use)."""
        if name in self.repositories:
            return self.repositories[name]
        specs = self.values.get("repositories", {})
        if name not in specs:
            raise self.error(
                path, f"no repository named {name!r} (repositories: {', '.join(specs) or 'none'})"
            )
        if name in self._building:
            cycle = " -> ".join([*self._building[self._building.index(name) :], name])
            raise self.error(
                ("repositories", name), f"the repositories refer to each other in a cycle: {cycle}"
            )
        self._building.append(name)
        try:
            repo = self._make_repository(("repositories", name), specs[name])
        finally:
            self._building.pop()
        self.repositories[name] = repo
        return repo

    def _make_repository(self, at: Path_, spec: dict[str, Any]) -> Any:
        from .. import repository as r

        kind = spec["kind"]

        def ref(field: str) -> Any:
            return self.repository((*at, field), spec[field])

        def fs(cls: Any) -> Any:
            options = {k: spec[k] for k in ("fsync",) if k in spec}
            args = [self.path(spec["root"])] + ([spec["extension"]] if "extension" in spec else [])
            return self.call(at, cls, *args, **options)

        if kind == "files":
            return fs(r.FileRepository)
        if kind == "directories":
            return fs(r.DirectoryRepository)
        if kind == "yaml_files":
            return fs(r.YamlMetadataFileRepository)
        if kind == "json_files":
            return fs(r.JsonMetadataFileRepository)
        if kind == "memory_blobs":
            return r.MemoryBlobRepository(name=at[-1])  # type: ignore[arg-type]
        if kind == "memory_metadata":
            return r.MemoryMetadataRepository(name=at[-1])  # type: ignore[arg-type]
        if kind in ("yaml", "json"):
            serialized: Any = r.YamlMetadataRepository if kind == "yaml" else r.JsonMetadataRepository
            options = {k: spec[k] for k in ("concurrency",) if k in spec}
            return self.call(at, serialized, ref("blobs"), **options)
        if kind in ("s3", "s3_yaml", "s3_json"):
            s3_class: Any = {
                "s3": r.S3BucketRepository,
                "s3_yaml": r.YamlMetadataS3Repository,
                "s3_json": r.JsonMetadataS3Repository,
            }[kind]
            client = self.resource((*at, "resource"), spec["resource"], "s3")
            rest = {
                k: v for k, v in spec.items() if k not in ("kind", "resource", "bucket", "prefix", "suffix")
            }
            args = [client, spec["bucket"], spec.get("prefix", "")]
            if "suffix" in spec:
                args.append(spec["suffix"])
            return self.call(at, s3_class, *args, **rest)
        if kind == "mongo":
            client = self.resource((*at, "resource"), spec["resource"], "mongo")
            database, collection = spec["database"], spec["collection"]
            return self.call(at, r.MongoMetadataRepository, lambda: client()[database][collection])
        if kind == "docker":
            rest = {k: v for k, v in spec.items() if k not in ("kind", "registry", "repository")}
            if "timeout" in rest:
                from ..durations import parse_duration

                rest["timeout"] = self.call((*at, "timeout"), parse_duration, rest["timeout"])
            return self.call(at, r.DockerRepository, spec["registry"], spec["repository"], **rest)
        if kind == "clock":
            rest = {k: v for k, v in spec.items() if k not in ("kind", "schedule")}
            return self.call(at, r.ClockRepository, spec["schedule"], name=at[-1], **rest)
        if kind in ("and", "or"):
            combinator: Any = r.AndRepository if kind == "and" else r.OrRepository
            children = [self.repository((*at, "of", i), n) for i, n in enumerate(spec["of"])]
            return self.call(at, combinator, *children)
        if kind == "blocking":
            return self.call(at, r.BlockingRepository, ref("source"), ref("blocker"))
        if kind == "filter":
            key = self.obj((*at, "key"), spec["key"]) if "key" in spec else None
            value = self.obj((*at, "value"), spec["value"]) if "value" in spec else None
            return self.call(at, r.FilterRepository, ref("of"), key, value_predicate=value)
        if kind == "translate_keys":
            to_child = self.obj((*at, "to_child"), spec["to_child"])
            from_child = self.obj((*at, "from_child"), spec["from_child"])
            return self.call(at, r.TranslateKeysRepository, ref("of"), to_child, from_child)
        if kind == "map_values":
            return self.call(
                at, r.MapValuesRepository, ref("of"), self.obj((*at, "function"), spec["function"])
            )
        if kind == "fallback":
            return self.call(at, r.FallbackRepository, ref("primary"), ref("fallback"))
        if kind == "read_only":
            return self.call(at, r.ReadOnlyRepository, ref("of"))
        raise self.error(at, f"unknown repository kind {kind!r}")  # pragma: no cover - the schema's enum

    # ---------------------------------------------------------------- executors
    def executor(self, path: Path_, name: str) -> Any:
        """The executor ``name`` (built on first use)."""
        if name in self.executors:
            return self.executors[name]
        specs = self.values.get("executors", {})
        if name not in specs:
            raise self.error(path, f"no executor named {name!r} (executors: {', '.join(specs) or 'none'})")
        if name in self._building:
            raise self.error(("executors", name), f"the executor {name!r} lists itself among its hosts")
        self._building.append(name)
        try:
            made = self._make_executor(("executors", name), name, specs[name])
        finally:
            self._building.pop()
        self.executors[name] = made
        return made

    def _make_executor(self, at: Path_, name: str, spec: dict[str, Any]) -> Any:
        from .. import executor as e

        kind = spec["kind"]
        rest = {k: v for k, v in spec.items() if k not in ("kind", "workers", "resource", "hosts")}
        if "memory" in rest and kind in ("in_loop", "threads", "processes", "dask"):
            rest["memory"] = self.call((*at, "memory"), e.parse_memory, rest["memory"])
        if kind == "dask":
            return self._dask_executor(at, name, spec, rest)
        if kind == "in_loop":
            return self.call(at, e.InLoopExecutor, name, **rest)
        if kind in ("threads", "processes"):
            pool_cls = ThreadPoolExecutor if kind == "threads" else ProcessPoolExecutor
            pool = pool_cls(spec.get("workers"))
            return self.call(at, e.PoolExecutor, pool, name=name, **rest)
        if kind == "local":
            return self.call(at, e.LocalHost, name, **rest)
        if kind == "ssh":
            from ..executor.ssh import SSHHost

            connection = self.resource((*at, "resource"), spec["resource"], "ssh")
            return self.call(at, SSHHost, connection, name=name, **rest)
        if kind == "hosts":
            hosts = [self.executor((*at, "hosts", i), n) for i, n in enumerate(spec["hosts"])]
            for i, host in enumerate(hosts):
                if not isinstance(host, e.Host):
                    raise self.error(
                        (*at, "hosts", i), f"{spec['hosts'][i]!r} is not a local or ssh executor"
                    )
            return self.call(at, e.Hosts, hosts, name=name)
        if kind == "kubernetes":
            from ..executor.kubernetes import KubeExecutor

            api = self.resource((*at, "resource"), spec["resource"], "kubernetes")
            return self.call(at, KubeExecutor, api, name=name, **rest)
        raise self.error(at, f"unknown executor kind {kind!r}")  # pragma: no cover - the schema's enum

    def _dask_executor(self, at: Path_, name: str, spec: dict[str, Any], rest: dict[str, Any]) -> Any:
        """A :class:`~pydatatask.config._dask.SessionDaskExecutor` over a client declared as
        the session resource ``executors.NAME`` (nothing connects before the session opens)."""
        from ..durations import parse_duration
        from ..executor import parse_memory
        from ._dask import SessionDaskExecutor

        if ("address" in spec) == ("local" in spec):
            raise self.error(
                at, "give exactly one of address (a running scheduler) or local (a LocalCluster)"
            )
        settings: dict[str, Any] = {k: rest.pop(k) for k in ("address", "local", "timeout") if k in rest}
        if "timeout" in settings:
            settings["timeout"] = self.call((*at, "timeout"), parse_duration, settings["timeout"])
        if "memory_limit" in settings.get("local", {}):
            local = settings["local"] = dict(settings["local"])
            local["memory_limit"] = self.call(
                (*at, "local", "memory_limit"), parse_memory, local["memory_limit"]
            )
        client = declare_dask_client(self.session, name, settings)
        return self.call(at, SessionDaskExecutor, client, name=name, **rest)

    # ---------------------------------------------------------------- tasks
    def _common(self, at: Path_, spec: dict[str, Any]) -> dict[str, Any]:
        from ..task.fan import FanOut
        from ..task.retry import RetryPolicy

        options: dict[str, Any] = {}
        if "inputs" in spec:
            options["inputs"] = {
                link: self.repository((*at, "inputs", link), repo) for link, repo in spec["inputs"].items()
            }
        if "outputs" in spec:
            outputs: dict[str, Any] = {}
            for link, given in spec["outputs"].items():
                where = (*at, "outputs", link)
                if isinstance(given, dict):
                    repo = self.repository((*where, "fan_out"), given["fan_out"])
                    outputs[link] = self.call(where, FanOut, repo, given.get("separator", "/"))
                else:
                    outputs[link] = self.repository(where, given)
            options["outputs"] = outputs
        for state in ("done", "live", "logs"):
            if state in spec:
                options[state] = self.repository((*at, state), spec[state])
        for plain in (
            "concurrency",
            "batch",
            "batch_wait",
            "timeout",
            "priority",
            "version",
            "on_change",
            "schedule",
        ):
            if plain in spec:
                options[plain] = spec[plain]
        if "retry" in spec:
            retry = dict(spec["retry"])
            if "retry_on" in retry:
                classes = []
                for i, dotted in enumerate(retry["retry_on"]):
                    cls = self.obj((*at, "retry", "retry_on", i), dotted)
                    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                        raise self.error(
                            (*at, "retry", "retry_on", i), f"{dotted!r} is not an exception class"
                        )
                    classes.append(cls)
                retry["retry_on"] = tuple(classes)
            options["retry"] = self.call((*at, "retry"), RetryPolicy, **retry)
        if "group_by" in spec:
            options["group_by"] = self.obj((*at, "group_by"), spec["group_by"])
        return options

    def _template(self, at: Path_, spec: dict[str, Any], inline: str, file_field: str) -> tuple[str, str]:
        """(the field given, the template text) of ``inline`` or ``file_field``."""
        given = [f for f in (inline, file_field) if f in spec]
        if len(given) != 1:
            raise self.error(at, f"give exactly one of {inline} or {file_field}")
        if given[0] == inline:
            return inline, str(spec[inline])
        try:
            return file_field, self.path(spec[file_field]).read_text(encoding="utf-8")
        except OSError as exc:
            raise self.error(
                (*at, file_field), f"cannot read {spec[file_field]!r}: {exc.strerror or exc}"
            ) from exc

    def task(self, name: str, spec: dict[str, Any]) -> Any:
        """The task ``name`` of ``spec``, with its extra links."""
        at: Path_ = ("tasks", name)
        kind = spec["kind"]
        options = self._common(at, spec)
        if kind == "function":
            from ..task.function import FunctionTask

            func = self.obj((*at, "function"), spec["function"])
            if "executor" in spec:
                options["executor"] = self.executor((*at, "executor"), spec["executor"])
            task = self.call(at, FunctionTask, name, func, **options)
        elif kind == "process":
            from ..task.process import ProcessTask

            given = [f for f in ("command", "script", "script_file") if f in spec]
            if len(given) != 1:
                raise self.error(at, "give exactly one of command, script or script_file")
            if given[0] == "script_file":
                options["script"] = self._template(at, spec, "script", "script_file")[1]
            else:
                options[given[0]] = spec[given[0]]
            for field in ("params", "env", "cpu", "memory", "kill_grace"):
                if field in spec:
                    options[field] = spec[field]
            for field in ("stdout", "stderr"):
                if field in spec:
                    options[field] = self.repository((*at, field), spec[field])
            if "executor" in spec:
                options["executor"] = self.executor((*at, "executor"), spec["executor"])
            task = self.call(at, ProcessTask, name, **options)
        else:
            from ..task.pod import PodTask

            manifest = self._template(at, spec, "manifest", "manifest_file")[1]
            for field in ("params", "env", "cpu", "memory"):
                if field in spec:
                    options[field] = spec[field]
            options["executor"] = self.executor((*at, "executor"), spec["executor"])
            task = self.call(at, PodTask, name, manifest, **options)
        for link, given in spec.get("links", {}).items():
            where = (*at, "links", link)
            if isinstance(given, str):
                self.call(where, task.link, link, self.repository(where, given))
            else:
                flags = {k: given[k] for k in ("kind", "required_for_start", "inhibits_start") if k in given}
                repo = self.repository((*where, "repository"), given["repository"])
                self.call(where, task.link, link, repo, **flags)
        return task

    # ---------------------------------------------------------------- the pipeline
    def pipeline(self) -> Any:
        """The :class:`~pydatatask.pipeline.pipeline.Pipeline` of the document."""
        from ..pipeline import Pipeline

        self.build_resources()
        for name in self.values.get("repositories", {}):
            self.repository(("repositories", name), name)
        for name in self.values.get("executors", {}):
            self.executor(("executors", name), name)
        tasks = [self.task(name, spec) for name, spec in self.values["tasks"].items()]
        settings = dict(self.values.get("pipeline", {}))
        hooks = settings.pop("hooks", {})
        if "state_dir" in settings:
            settings["state_dir"] = self.path(settings["state_dir"])
        pipeline = self.call(("pipeline",), Pipeline, tasks, self.session, **settings)
        for event, callbacks in hooks.items():
            for i, hook in enumerate(callbacks):
                where: Path_ = ("pipeline", "hooks", event, i)
                if isinstance(hook, str):
                    pipeline.hooks.on(event, self.obj(where, hook))
                    continue
                func = self.obj((*where, "function"), hook["function"])
                repos = {
                    param: self.repository((*where, "repositories", param), repo)
                    for param, repo in hook.get("repositories", {}).items()
                }
                pipeline.hooks.on(event, functools.partial(func, **repos) if repos else func)
        return pipeline
