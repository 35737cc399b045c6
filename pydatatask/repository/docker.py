"""The tags of one repository in an OCI / Docker registry (distribution API v2).

A :class:`DockerRepository` is a plain :class:`~pydatatask.repository.base.Repository`: its keys
are image tags, and it can list, check and delete them, and name the images for templates
(:meth:`DockerRepository.image`, :meth:`DockerRepository.info`). Reading or writing image
*contents* is out of scope: images are pushed by ``docker``/``buildah``/``crane`` or by a
job, and this repository sees the tag once the push has completed (a registry makes a tag
visible only when its manifest is written, after every blob).

Every valid Docker tag (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``) is a valid pydatatask key;
keys longer than 128 characters are refused with :class:`~pydatatask.errors.InvalidKeyError`.

httpx is imported lazily: importing this module does not need it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import secrets
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin, urlsplit

from .._deps import require
from ..backoff import Backoff
from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    KeyNotFoundError,
    RepositoryError,
    UnsupportedOperationError,
)
from ..keys import validate_key
from ..session import resolve
from .base import Repository

if TYPE_CHECKING:
    import httpx

__all__ = ("DockerRepository", "parse_www_authenticate", "TAG_RULE", "MANIFEST_MEDIA_TYPES")

TAG_RULE = "a Docker tag is 1-128 characters of ASCII letters, digits, '_', '.' and '-', not starting with '.' or '-'"
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*")

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
_RETRY_STATUS = {429, 500, 502, 503, 504}


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """Split a ``WWW-Authenticate`` challenge into ``(scheme, params)``.

    ``Bearer realm="https://auth/token",service="reg",scope="repository:a/b:pull,push"``
    gives ``("bearer", {"realm": ..., "service": "reg", "scope": "repository:a/b:pull,push"})``.
    The scheme is lower-cased; quoted values may contain commas and ``\\"`` escapes.
    """
    header = header.strip()
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,\t":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        name = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            value = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1  # closing quote
            params[name] = "".join(value)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[name] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DockerRepository(Repository):
    """The tags of ``repository`` in the registry at ``registry``.

    ``registry`` is a base URL (``http://127.0.0.1:5000``, ``https://ghcr.io``) or a host
    (``registry.example.com:5000``; https unless ``insecure=True`` or the host is loopback).
    Plain http is allowed only for loopback hosts or with ``insecure=True``.

    ``client`` is an ``httpx.AsyncClient`` or a session accessor returning one; without it
    the repository creates one on first use and owns it (close it with :meth:`aclose` or
    ``async with``). ``username``/``password`` are used for Basic auth or to fetch Bearer
    tokens when the registry asks (``WWW-Authenticate``); they never appear in messages.

    Connection errors and 429/5xx answers are retried under ``retry`` (a
    :class:`~pydatatask.backoff.Backoff`; default ``Backoff()``; a ``Retry-After`` of the
    registry lengthens a wait, up to 30 s), then raise
    :class:`~pydatatask.errors.BackendUnavailableError`;
    other failures raise :class:`~pydatatask.errors.RepositoryError` with the HTTP status and
    the registry's error code.
    """

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        client: httpx.AsyncClient | Callable[[], httpx.AsyncClient] | None = None,
        username: str | None = None,
        password: str | None = None,
        insecure: bool | None = None,
        timeout: float = 30.0,
        retry: Backoff | None = None,
        page_size: int | None = None,
    ) -> None:
        if "://" not in registry:
            host = registry.rstrip("/")
            hostname = urlsplit("//" + host).hostname or ""
            scheme = "http" if insecure or (insecure is None and _is_loopback(hostname)) else "https"
            registry = f"{scheme}://{host}"
        parts = urlsplit(registry)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"registry must be a host or an http(s) URL, not {registry!r}")
        if parts.username or parts.password:
            raise ConfigurationError("put registry credentials in username=/password=, not in the URL")
        if parts.scheme == "http" and not (insecure or _is_loopback(parts.hostname)):
            raise ConfigurationError(
                f"plain http to {parts.netloc} is only allowed for loopback hosts; pass insecure=True "
                "if you really mean it"
            )
        if not _NAME_RE.fullmatch(repository):
            raise ConfigurationError(
                f"invalid registry repository name {repository!r}: lower-case path components of "
                "letters and digits separated by '.', '_', '__' or '-', joined by '/'"
            )
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.host = parts.netloc
        self.repository = repository
        self.timeout = timeout
        if retry is not None and not isinstance(retry, Backoff):
            raise ConfigurationError(f"retry must be a pydatatask.Backoff, not {type(retry).__name__}")
        #: the retry policy of this repository's requests
        self.retry = retry or Backoff()
        self.page_size = page_size
        self._client_arg = client
        self._owned: httpx.AsyncClient | None = None
        self._username = username
        self._password = password
        self._tokens: dict[str, str] = {}  # scope -> bearer token
        self._basic = False
        self._tag_delete: bool | None = None  # does the registry delete tags? (None: not known yet)

    # --- naming -------------------------------------------------------------------
    def describe(self) -> str:
        return f"docker registry {self.host}/{self.repository}"

    def _check_key(self, key: str) -> str:
        return self.tag(key)

    @staticmethod
    def tag(key: str) -> str:
        """Return ``key`` as a tag (unchanged), or raise :class:`~pydatatask.errors.InvalidKeyError`."""
        validate_key(key)
        if not _TAG_RE.fullmatch(key):
            raise InvalidKeyError(key, f"{TAG_RULE} (this key has {len(key)})")
        return key

    def image(self, key: str) -> str:
        """``host:port/repository:tag`` - the reference to pull the image of ``key``."""
        return f"{self.host}/{self.repository}:{self.tag(key)}"

    async def info(self, key: str) -> dict[str, str]:
        """Names of ``key``'s image for templates; raise :class:`~pydatatask.errors.KeyNotFoundError` if absent.

        ``image`` (``host/repo:tag``), ``image_without_registry`` (``repo:tag``),
        ``digest`` (``sha256:...``), ``reference_by_digest`` (``host/repo@sha256:...``).
        """
        tag = self.tag(key)
        digest = await self._digest(tag)
        if digest is None:
            raise KeyNotFoundError(key, self.describe())
        return {
            "tag": tag,
            "image": f"{self.host}/{self.repository}:{tag}",
            "image_without_registry": f"{self.repository}:{tag}",
            "digest": digest,
            "reference_by_digest": f"{self.host}/{self.repository}@{digest}",
        }

    # --- lifecycle ----------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        if self._client_arg is not None:
            client: httpx.AsyncClient = resolve(self._client_arg)
            return client
        if self._owned is None:
            httpx_mod = require("httpx", "docker")
            self._owned = httpx_mod.AsyncClient(timeout=self.timeout)
        return self._owned

    async def aclose(self) -> None:
        """Close the HTTP client if this repository created it."""
        if self._owned is not None:
            owned, self._owned = self._owned, None
            await owned.aclose()

    async def __aenter__(self) -> DockerRepository:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def validate(self, create: bool = False) -> None:
        """Check the registry answers ``GET /v2/`` (and our credentials, if it asks for them)."""
        await self._request("GET", "/v2/", ok=(200,))

    # --- Repository hooks ----------------------------------------------------------
    async def _list(self) -> Iterable[str]:
        names: list[str] = []
        url: str | None = f"/v2/{self.repository}/tags/list"
        if self.page_size:
            url = f"{url}?{urlencode({'n': self.page_size})}"
        seen: set[str] = set()
        while url is not None and url not in seen:
            seen.add(url)
            resp = await self._request("GET", url, ok=(200, 404))
            if resp.status_code == 404:  # NAME_UNKNOWN: no tag was ever pushed (or all are gone)
                return names
            body = resp.json()
            names.extend(body.get("tags") or [])  # "tags": null once every tag is deleted
            nxt = resp.links.get("next", {}).get("url")
            url = urljoin(self.base_url + "/", nxt) if nxt else None
        return names

    async def _contains(self, key: str) -> bool:
        return await self._digest(self.tag(key)) is not None

    async def _delete(self, key: str) -> None:
        """Remove the tag ``key`` only: other tags of the same image stay.

        Registries that implement tag deletion (OCI distribution 1.1: ``DELETE
        /v2/<repo>/manifests/<tag>``) are asked directly. Older ones (distribution 2.x
        answers 400 DIGEST_INVALID) can only delete a manifest by digest, which would also
        remove every other tag of that image; there the tag is first re-pointed to a unique,
        empty "tombstone" manifest, which is then deleted by digest (as ``regctl tag rm``
        does). The original manifest stays for the other tags (or for the registry's
        garbage collector).
        """
        tag = self.tag(key)
        if await self._digest(tag) is None:
            return
        path = f"/v2/{self.repository}/manifests/"
        if self._tag_delete is not False:
            resp = await self._request("DELETE", path + tag, ok=(200, 202, 400, 404, 405))
            if resp.status_code in (200, 202, 404):
                self._tag_delete = True
                return
            if resp.status_code == 405:
                raise self._deletes_disabled(resp)
            self._tag_delete = False  # 400: this registry deletes manifests by digest only
        await self._delete_via_tombstone(tag)

    async def _delete_via_tombstone(self, tag: str) -> None:
        path = f"/v2/{self.repository}/manifests/"
        original = await self._request("GET", path + tag, ok=(200, 404), headers={"Accept": _ACCEPT})
        if original.status_code == 404:
            return
        config = b"{}"
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        await self._push_blob(config, config_digest)
        tombstone = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": _OCI_MANIFEST,
                "config": {"mediaType": _OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [],
                "annotations": {"org.pydatatask.tombstone": secrets.token_hex(16)},
            }
        ).encode()
        await self._request(
            "PUT", path + tag, ok=(201,), headers={"Content-Type": _OCI_MANIFEST}, content=tombstone
        )
        digest = "sha256:" + hashlib.sha256(tombstone).hexdigest()
        resp = await self._request("DELETE", path + digest, ok=(200, 202, 404, 405))
        if resp.status_code == 405:
            # put the image back before reporting: the tag must not stay on the tombstone
            content_type = original.headers.get("Content-Type", _OCI_MANIFEST)
            await self._request(
                "PUT", path + tag, ok=(201,), headers={"Content-Type": content_type}, content=original.content
            )
            raise self._deletes_disabled(resp)

    async def _push_blob(self, data: bytes, digest: str) -> None:
        exists = await self._request("HEAD", f"/v2/{self.repository}/blobs/{digest}", ok=(200, 404))
        if exists.status_code == 200:
            return
        start = await self._request("POST", f"/v2/{self.repository}/blobs/uploads/", ok=(202,))
        location = urljoin(self.base_url + "/", start.headers["Location"])
        # append digest= ourselves: httpx's params= would drop the upload URL's own query
        url = location + ("&" if "?" in location else "?") + urlencode({"digest": digest})
        await self._request(
            "PUT", url, ok=(201,), headers={"Content-Type": "application/octet-stream"}, content=data
        )

    def _deletes_disabled(self, resp: httpx.Response) -> UnsupportedOperationError:
        codes = ", ".join(sorted(c for c in _error_codes(resp) if c)) or "no error code"
        return UnsupportedOperationError(
            f"{self.describe()} refuses deletes (HTTP 405, {codes}): deletes are disabled in the "
            "registry (for distribution/registry: storage.delete.enabled: true)"
        )

    # --- HTTP ------------------------------------------------------------------------
    async def _digest(self, tag: str) -> str | None:
        """The manifest digest of ``tag``, or None if the tag does not exist."""
        path = f"/v2/{self.repository}/manifests/{tag}"
        resp = await self._request("HEAD", path, ok=(200, 404), headers={"Accept": _ACCEPT})
        if resp.status_code == 404:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        if digest:
            return str(digest)
        # some registries omit the header on HEAD: hash the manifest itself
        resp = await self._request("GET", path, ok=(200, 404), headers={"Accept": _ACCEPT})
        if resp.status_code == 404:
            return None
        return (
            resp.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(resp.content).hexdigest()
        )

    def _auth_header(self, scope: str | None) -> dict[str, str]:
        if scope is not None and scope in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[scope]}"}
        if self._basic and self._username is not None:
            raw = f"{self._username}:{self._password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    async def _request(
        self,
        method: str,
        url: str,
        *,
        ok: tuple[int, ...],
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send one request with auth, retries and error translation; return an ``ok`` response."""
        httpx_mod = require("httpx", "docker")
        full = url if "://" in url else self.base_url + url
        what = f"{method} {self._path(full)}"
        scope: str | None = f"repository:{self.repository}:pull"
        authed = False

        async def once() -> httpx.Response:
            nonlocal scope, authed
            while True:
                resp = await self._client().request(
                    method, full, headers={**(headers or {}), **self._auth_header(scope)}, content=content
                )
                if resp.status_code == 401 and not authed:
                    authed = True  # answer the challenge once, then send the request again
                    scope = await self._authenticate(resp, scope)
                    continue
                if resp.status_code in ok:
                    return resp
                if resp.status_code == 401:
                    raise BackendUnavailableError(
                        f"authentication failed for registry {self.base_url} "
                        f"({'no credentials given' if self._username is None else 'credentials refused'})"
                    )
                if resp.status_code in _RETRY_STATUS:
                    raise _Busy(resp)
                raise self._error(what, resp)

        def fail(exc: Exception, attempts: int) -> BaseException:
            if isinstance(exc, httpx_mod.TransportError):
                return BackendUnavailableError(
                    f"registry {self.base_url} is unreachable ({what} failed after {attempts} "
                    f"attempt(s)): {type(exc).__name__}"
                )
            if isinstance(exc, _Busy):
                return BackendUnavailableError(
                    f"registry {self.base_url} keeps failing: {exc.status} on {what} after {attempts} attempt(s)"
                )
            return exc

        return await self.retry.run(
            f"{self.describe()}: {what}",
            once,
            transient=lambda exc: isinstance(exc, httpx_mod.TransportError | _Busy),
            fail=fail,
            wait_at_least=lambda exc: exc.retry_after if isinstance(exc, _Busy) else None,
            describe=lambda exc: str(exc) if isinstance(exc, _Busy) else type(exc).__name__,
        )

    async def _authenticate(self, resp: httpx.Response, scope: str | None) -> str | None:
        """Answer a 401 challenge; return the scope to use for the retried request."""
        scheme, params = parse_www_authenticate(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if self._username is None:
                raise BackendUnavailableError(f"registry {self.base_url} requires credentials (Basic auth)")
            self._basic = True
            return scope
        if scheme != "bearer" or "realm" not in params:
            raise BackendUnavailableError(
                f"registry {self.base_url} asked for unsupported authentication {scheme or '(none)'!r}"
            )
        scope = params.get("scope", scope)
        query = {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
        realm = params["realm"]
        token_url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers: dict[str, str] = {}
        if self._username is not None:
            raw = f"{self._username}:{self._password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        httpx_mod = require("httpx", "docker")
        try:
            tok = await self._client().get(token_url, headers=headers)
        except httpx_mod.TransportError as exc:
            raise BackendUnavailableError(
                f"token service of registry {self.base_url} is unreachable: {type(exc).__name__}"
            ) from exc
        if tok.status_code != 200:
            raise BackendUnavailableError(
                f"authentication failed for registry {self.base_url}: token service answered {tok.status_code}"
            )
        body = tok.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise BackendUnavailableError(f"token service of registry {self.base_url} returned no token")
        self._tokens[scope or ""] = str(token)
        return scope or ""

    def _path(self, url: str) -> str:
        return urlsplit(url).path

    def _error(self, what: str, resp: httpx.Response) -> RepositoryError:
        codes = ", ".join(sorted(c for c in _error_codes(resp) if c)) or "no error code"
        return RepositoryError(f"{what} on {self.describe()} failed: HTTP {resp.status_code} ({codes})")


class _Busy(Exception):
    """A 429/5xx answer: worth another attempt, after ``Retry-After`` if the registry says."""

    def __init__(self, resp: httpx.Response) -> None:
        super().__init__(f"HTTP {resp.status_code}")
        self.status = resp.status_code
        after = resp.headers.get("Retry-After", "")
        self.retry_after = min(30.0, float(after)) if after.isdigit() else None


def _error_codes(resp: httpx.Response) -> set[str]:
    """The ``errors[].code`` values of a registry error body ({""} if there is none)."""
    try:
        body = resp.json()
        return {str(e.get("code", "")) for e in body.get("errors", [])} or {""}
    except Exception:
        return {""}
