"""What S3 failures mean: which are worth a retry, and which pydatatask error each becomes."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..._deps import require
from ...errors import BackendUnavailableError, PydatataskError, RepositoryError

__all__ = (
    "AUTH_CODES",
    "EXISTS_CODES",
    "NOT_FOUND_CODES",
    "Expected",
    "client_attempts",
    "error_code",
    "is_network",
    "retryable",
    "translate",
)

# server said "not now": the request was not carried out, safe to repeat in any case
THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "503",
        "429",
    }
)
# server-side failures whose effect is unknown: repeat only idempotent requests
TRANSIENT_CODES = frozenset(
    {"InternalError", "RequestTimeout", "RequestTimeoutException", "500", "502", "504"}
)
AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "403",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
EXISTS_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})

# botocore's default attempts per retry mode when a client's config names no number
_BOTOCORE_DEFAULT_ATTEMPTS = {"legacy": 5, "standard": 3, "adaptive": 3}

_botocore_exceptions: ModuleType | None = None


def _bexc() -> ModuleType:
    global _botocore_exceptions
    if _botocore_exceptions is None:
        _botocore_exceptions = require("botocore.exceptions", "s3")
    return _botocore_exceptions


def client_attempts(client: Any) -> int:
    """How many times the client itself tries each request (botocore's own retries).

    ``1`` for a client made with ``retries={"total_max_attempts": 1}``, and for an object
    that is not a botocore client at all.
    """
    retries = getattr(getattr(getattr(client, "meta", None), "config", None), "retries", None)
    if not isinstance(retries, dict):
        return 1
    total = retries.get("total_max_attempts")
    if total is None:
        total = _BOTOCORE_DEFAULT_ATTEMPTS.get(str(retries.get("mode", "legacy")), 3)
    return max(1, int(total))


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (``""`` for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def _error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Message", ""))


def _http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_client_error(exc: BaseException) -> bool:
    return isinstance(exc, _bexc().ClientError)


def _is_unsent(exc: BaseException) -> bool:
    """The request never reached the server (connection refused, connect timeout, DNS)."""
    b = _bexc()
    if isinstance(exc, b.SSLError):
        return False  # a TLS misconfiguration does not heal by retrying
    return isinstance(exc, b.ConnectionError | ConnectionRefusedError)


def is_network(exc: BaseException) -> bool:
    """Any transport failure (including ones after the request was sent)."""
    b = _bexc()
    if isinstance(exc, b.SSLError):
        return False
    network: tuple[type[BaseException], ...] = (
        b.ConnectionError,
        b.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
        b.IncompleteReadError,
        OSError,  # ConnectionResetError, TimeoutError, ...
    )
    try:
        import aiohttp

        network += (aiohttp.ClientError,)
    except ImportError:  # pragma: no cover - aiobotocore depends on aiohttp
        pass
    return isinstance(exc, network)


def retryable(exc: BaseException, idempotent: bool) -> bool:
    """Whether repeating the request that raised ``exc`` is safe and may help."""
    if isinstance(exc, Expected):
        return False
    if _is_client_error(exc):
        code = error_code(exc)
        status = _http_status(exc)
        if code in THROTTLE_CODES or status in (429, 503):
            return True
        return idempotent and (code in TRANSIENT_CODES or status >= 500)
    if _is_unsent(exc):
        return True
    return idempotent and is_network(exc)


class Expected(Exception):
    """An S3 error the caller asked to handle itself (``expect=`` of ``_call``)."""

    def __init__(self, code: str, cause: BaseException) -> None:
        super().__init__(code)
        self.code = code
        self.cause = cause


def translate(exc: Exception, what: str, where: str, attempts: int) -> PydatataskError:
    """The pydatatask error for ``exc``; ``where`` names the bucket and endpoint (no secret).

    An error that is already a pydatatask one (from a nested request) is returned as it is.
    """
    if isinstance(exc, PydatataskError):
        return exc
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    b = _bexc()
    if _is_client_error(exc):
        code = error_code(exc)
        status = _http_status(exc)
        detail = f"{code}: {_error_message(exc)}".rstrip(": ")
        if code == "NoSuchBucket":
            return RepositoryError(
                f"{what}: {where} does not exist; create it, or call validate(create=True) "
                "or pass create_bucket=True to create it when the pipeline opens"
            )
        if code in AUTH_CODES or status == 403:
            hint = {
                "InvalidAccessKeyId": "the server does not know this access key",
                "SignatureDoesNotMatch": "the secret key does not match the access key",
            }.get(code, "check the access key, the secret key and the bucket's permissions")
            return BackendUnavailableError(f"{what}: access refused to {where} ({detail}): {hint}")
        if code in THROTTLE_CODES or code in TRANSIENT_CODES or status >= 500:
            return BackendUnavailableError(f"{what}: {where} failed{tries}: {detail} (HTTP {status})")
        return RepositoryError(f"{what}: {where} failed: {detail} (HTTP {status})")
    if isinstance(exc, b.NoCredentialsError | b.PartialCredentialsError | b.CredentialRetrievalError):
        return BackendUnavailableError(
            f"{what}: no usable S3 credentials for {where}: {exc}; set them on the client "
            "(e.g. from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        )
    if is_network(exc) or isinstance(exc, b.SSLError):
        return BackendUnavailableError(f"{what}: cannot reach {where}{tries}: {type(exc).__name__}: {exc}")
    return RepositoryError(f"{what}: {where} failed: {type(exc).__name__}: {exc}")
