"""DockerRepository against the real registry test server (scripts/test-services)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from pydatatask import (
    BackendUnavailableError,
    Backoff,
    ConfigurationError,
    InvalidKeyError,
    KeyNotFoundError,
    UnsupportedOperationError,
)
from pydatatask.repository.docker import DockerRepository, parse_www_authenticate
from pydatatask.testing import RepositoryTests, odd_valid_keys
from tests.conftest import service

pytestmark = pytest.mark.registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Pusher:
    """Pushes a tiny one-layer image through the registry HTTP API (as docker/crane would)."""

    def __init__(self, client: httpx.AsyncClient, base: str, repository: str) -> None:
        self.client = client
        self.base = base
        self.repository = repository
        self._manifest: bytes | None = None

    async def _blob(self, data: bytes) -> str:
        digest = _sha(data)
        r = await self.client.post(f"{self.base}/v2/{self.repository}/blobs/uploads/")
        assert r.status_code == 202, (r.status_code, r.text)
        location = r.headers["Location"]
        if "://" not in location:
            location = self.base + location
        # httpx drops the Location's own query (_state) if digest goes in params=: append it
        url = location + ("&" if "?" in location else "?") + "digest=" + digest
        r = await self.client.put(url, content=data, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, (r.status_code, r.text)
        return digest

    async def manifest(self, content: bytes = b"hello\n") -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("hello.txt")
            info.size = len(content)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
        raw = buf.getvalue()
        layer = gzip.compress(raw, mtime=0)
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [_sha(raw)]}},
            sort_keys=True,
        ).encode()
        layer_digest = await self._blob(layer)
        config_digest = await self._blob(config)
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest,
                        "size": len(layer),
                    }
                ],
            }
        ).encode()

    async def push(self, tag: str, manifest: bytes | None = None) -> str:
        """Push the image under ``tag``; return its manifest digest."""
        if manifest is None:
            if self._manifest is None:
                self._manifest = await self.manifest()
            manifest = self._manifest
        r = await self.client.put(
            f"{self.base}/v2/{self.repository}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201, (r.status_code, r.text)
        assert r.headers["Docker-Content-Digest"] == _sha(manifest)
        return _sha(manifest)


@pytest.fixture
def registry(services: dict[str, Any]) -> dict[str, Any]:
    return service(services, "registry")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
def repo_name() -> str:
    return f"pdt-test/r{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def repo(registry: dict[str, Any], repo_name: str) -> AsyncIterator[DockerRepository]:
    async with DockerRepository(registry["url"], repo_name) as r:
        yield r


@pytest.fixture
def pusher(http: httpx.AsyncClient, registry: dict[str, Any], repo_name: str) -> Pusher:
    return Pusher(http, registry["url"], repo_name)


class TestDockerConformance(RepositoryTests):
    """The base repository suite; a value is an image pushed under the tag."""

    stores_path_keys = False  # the tag grammar: nested, spaced and non-ASCII keys are refused
    knows_versions = False  # the tag list carries no digests (one HEAD per tag would)

    @pytest.fixture(autouse=True)
    def _bind(self, pusher: Pusher) -> None:
        self._pusher = pusher

    async def make(self, repo: Any, key: str) -> None:
        repo.tag(key)  # refuse what the repository refuses, before pushing anything
        await self._pusher.push(key)

    async def test_odd_valid_keys(self, repo: DockerRepository) -> None:  # type: ignore[override]
        # Docker tags stop at 128 characters: a 200-character key must be refused
        keys = odd_valid_keys() + ["y" * 128]
        for key in keys:
            await self.make(repo, key)
        assert await repo.keys() == set(keys)
        for key in keys:
            assert await repo.contains(key)
        too_long = "x" * 200
        for call in (repo.contains, repo.delete, repo.info):
            with pytest.raises(InvalidKeyError, match="128"):
                await call(too_long)
        with pytest.raises(InvalidKeyError, match="128"):
            repo.image("z" * 129)


async def test_push_list_info_delete(
    repo: DockerRepository, pusher: Pusher, registry: dict[str, Any]
) -> None:
    assert await repo.keys() == set()
    digest = await pusher.push("v1")
    other = await pusher.push("v2", await pusher.manifest(b"other content\n"))
    assert await repo.keys() == {"v1", "v2"}
    assert await repo.contains("v1")
    info = await repo.info("v1")
    host = registry["host"]
    assert info == {
        "tag": "v1",
        "image": f"{host}/{repo.repository}:v1",
        "image_without_registry": f"{repo.repository}:v1",
        "digest": digest,
        "reference_by_digest": f"{host}/{repo.repository}@{digest}",
    }
    assert repo.image("v1") == info["image"]
    assert (await repo.info("v2"))["digest"] == other
    await repo.delete("v1")
    assert await repo.keys() == {"v2"}
    assert not await repo.contains("v1")
    with pytest.raises(KeyNotFoundError):
        await repo.info("v1")
    await repo.delete("v1")
    await repo.delete("v2")
    assert await repo.keys() == set()


async def test_delete_keeps_other_tags_of_the_same_image(repo: DockerRepository, pusher: Pusher) -> None:
    digest = await pusher.push("v1")
    assert await pusher.push("latest") == digest
    await repo.delete("v1")
    assert await repo.keys() == {"latest"}
    assert (await repo.info("latest"))["digest"] == digest
    await repo.delete("latest")
    assert await repo.keys() == set()


# ---------------------------------------------------------------- registry-auth: basic auth, no deletes
@pytest.fixture
def registry_auth(services: dict[str, Any]) -> dict[str, Any]:
    return service(services, "registry_auth")


@pytest.fixture
async def auth_pusher(registry_auth: dict[str, Any], repo_name: str) -> AsyncIterator[Pusher]:
    creds = (registry_auth["username"], registry_auth["password"])
    async with httpx.AsyncClient(timeout=30, auth=creds) as client:
        yield Pusher(client, registry_auth["url"], repo_name)


@pytest.fixture
async def auth_repo(registry_auth: dict[str, Any], repo_name: str) -> AsyncIterator[DockerRepository]:
    async with DockerRepository(
        registry_auth["url"],
        repo_name,
        username=registry_auth["username"],
        password=registry_auth["password"],
    ) as repo:
        yield repo


async def test_basic_auth_registry(
    registry_auth: dict[str, Any], auth_repo: DockerRepository, auth_pusher: Pusher
) -> None:
    """The registry answers 401 + ``WWW-Authenticate: Basic``; the repository sends the
    credentials it was given and lists, checks and describes tags."""
    digest = await auth_pusher.push("v1")
    await auth_repo.validate()
    assert await auth_repo.keys() == {"v1"}
    assert await auth_repo.contains("v1") and not await auth_repo.contains("v2")
    assert (await auth_repo.info("v1"))["digest"] == digest
    assert registry_auth["password"] not in auth_repo.describe()


@pytest.mark.parametrize("password", ["wrong-password-123", None])
async def test_refused_credentials_are_reported_without_them(
    registry_auth: dict[str, Any], repo_name: str, password: str | None
) -> None:
    creds = {"username": registry_auth["username"], "password": password} if password else {}
    async with DockerRepository(
        registry_auth["url"], repo_name, retry=Backoff(initial=0.01), **creds
    ) as repo:
        expected = "authentication failed" if password else "requires credentials"
        with pytest.raises(BackendUnavailableError, match=expected) as info:
            await repo.keys()
        assert registry_auth["host"] in str(info.value)
        if password:
            assert password not in str(info.value)


async def test_deletes_disabled(auth_repo: DockerRepository, auth_pusher: Pusher) -> None:
    """registry-auth runs with ``storage.delete.enabled: false`` (405 UNSUPPORTED)."""
    await auth_pusher.push("v1")
    with pytest.raises(UnsupportedOperationError, match="deletes are disabled"):
        await auth_repo.delete("v1")
    assert await auth_repo.keys() == {"v1"}  # nothing lost


async def test_pagination(registry: dict[str, Any], repo_name: str, pusher: Pusher) -> None:
    tags = {f"t{i:02d}" for i in range(30)}
    manifest = await pusher.manifest()
    for tag in tags:
        await pusher.push(tag, manifest)
    async with DockerRepository(registry["url"], repo_name, page_size=7) as paged:
        assert await paged.keys() == tags
    async with DockerRepository(registry["url"], repo_name) as whole:
        assert await whole.keys() == tags


async def test_pagination_follows_link_headers() -> None:
    """Link-header pagination, with a mock transport (the test registry ignores ?n=)."""
    pages = {
        "/v2/a/b/tags/list": (["t1", "t2"], '</v2/a/b/tags/list?last=t2&n=2>; rel="next"'),
        "/v2/a/b/tags/list?last=t2&n=2": (["t3", "_x"], '</v2/a/b/tags/list?last=_x&n=2>; rel="next"'),
        "/v2/a/b/tags/list?last=_x&n=2": (["t4"], None),
    }
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode()
        seen.append(target)
        tags, link = pages[target]
        headers = {"Link": link} if link else {}
        return httpx.Response(200, json={"name": "a/b", "tags": tags}, headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        repo = DockerRepository("http://127.0.0.1:1", "a/b", client=client)
        assert await repo.keys() == {"t1", "t2", "t3", "_x", "t4"}
    assert len(seen) == 3


async def test_unreachable_registry() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with DockerRepository(
        f"http://127.0.0.1:{port}",
        "x/y",
        username="pdtuser",
        password="s3cretPassw0rd",
        retry=Backoff(initial=0.05),
    ) as repo:
        start = time.perf_counter()
        with pytest.raises(BackendUnavailableError) as info:
            await repo.keys()
        assert time.perf_counter() - start < 5
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "s3cret" not in str(info.value) and "s3cret" not in repo.describe()
        with pytest.raises(BackendUnavailableError):
            await repo.validate()


async def test_validate(repo: DockerRepository) -> None:
    await repo.validate()


async def test_accessor_client(registry: dict[str, Any], repo_name: str, pusher: Pusher) -> None:
    await pusher.push("v1")
    async with httpx.AsyncClient() as client:
        repo = DockerRepository(registry["url"], repo_name, client=lambda: client)
        assert await repo.keys() == {"v1"}
        await repo.aclose()  # not ours: stays open
        assert not client.is_closed


def test_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="loopback"):
        DockerRepository("http://registry.example.com", "a/b")
    with pytest.raises(ConfigurationError, match="username="):
        DockerRepository("https://u:p@registry.example.com", "a/b")
    with pytest.raises(ConfigurationError, match="repository name"):
        DockerRepository("https://registry.example.com", "Upper/Case")
    assert DockerRepository("registry.example.com", "a/b").base_url == "https://registry.example.com"
    assert (
        DockerRepository("registry.example.com", "a", insecure=True).base_url == "http://registry.example.com"
    )
    assert DockerRepository("127.0.0.1:5000", "a").base_url == "http://127.0.0.1:5000"
    repo = DockerRepository("registry.example.com:5000", "team/app")
    assert repo.image("v1.2") == "registry.example.com:5000/team/app:v1.2"
    assert repo.describe() == "docker registry registry.example.com:5000/team/app"


def test_parse_www_authenticate() -> None:
    scheme, params = parse_www_authenticate(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/app:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:team/app:pull,push",
    }
    assert parse_www_authenticate('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert parse_www_authenticate('bearer realm=https://a/t, error="insufficient_scope"') == (
        "bearer",
        {"realm": "https://a/t", "error": "insufficient_scope"},
    )
    assert parse_www_authenticate('Bearer realm="a\\"b"') == ("bearer", {"realm": 'a"b'})
    assert parse_www_authenticate("") == ("", {})


async def test_bearer_token_flow_with_mock_registry() -> None:
    """401 + Bearer challenge -> token fetched with basic credentials -> retried request.

    A mock transport: the test servers include no token server (registry-auth covers the
    real Basic challenge)."""
    calls: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("Authorization")
        calls.append((request.url.path, auth))
        if request.url.host == "auth.example.com":
            assert auth is not None and auth.startswith("Basic ")
            assert request.url.params["scope"] == "repository:a/b:pull"
            return httpx.Response(200, json={"token": "tok123"})
        if auth != "Bearer tok123":
            return httpx.Response(
                401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="https://auth.example.com/token",service="reg",'
                    'scope="repository:a/b:pull"'
                },
            )
        return httpx.Response(200, json={"name": "a/b", "tags": ["v1"]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        repo = DockerRepository("https://reg.example.com", "a/b", client=client, username="u", password="pw")
        assert await repo.keys() == {"v1"}
        assert await repo.keys() == {"v1"}  # token cached: no second challenge
    assert [c[0] for c in calls] == ["/v2/a/b/tags/list", "/token", "/v2/a/b/tags/list", "/v2/a/b/tags/list"]


async def test_server_errors_are_retried_then_reported() -> None:
    """A mock transport: no real registry answers 503 on demand."""
    count = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        if count < 3:
            return httpx.Response(503)
        return httpx.Response(200, json={"name": "a/b", "tags": ["v1"]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        repo = DockerRepository("https://reg.example.com", "a/b", client=client, retry=Backoff(initial=0.01))
        assert await repo.keys() == {"v1"}
        assert count == 3
        count = -100
        with pytest.raises(BackendUnavailableError, match="503"):
            await repo.keys()
