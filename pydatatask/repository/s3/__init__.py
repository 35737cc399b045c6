"""S3 repositories: one object per key in a bucket, named ``prefix + key + suffix``.

:class:`S3BucketRepository` stores blobs; :class:`YamlMetadataS3Repository` and
:class:`JsonMetadataS3Repository` store structured values as YAML/JSON objects on top of
it. The client is an aiobotocore S3 client, or the accessor ``@session.resource``
returns; it is resolved at every call, so repositories can be built before the session
opens. aiobotocore is imported only when a repository is built (``pip install
'pydatatask[s3]'``), so importing this module stays light.

Semantics:

* Listing is one ``ListObjectsV2`` pass over ``prefix``. The prefix is used verbatim: write
  ``"dir/"`` for a directory-like prefix (``"dir"`` also matches ``"directory/..."``).
  Names deeper than the prefix (containing ``/``) are not valid keys and are skipped with
  one warning.
* Writes are atomic: small values (up to ``multipart_threshold``) are one ``PutObject``
  at commit; larger ones are a multipart upload whose parts are sent as they fill (at most
  about one part is buffered) and which is completed on commit or aborted otherwise.
* ``create_bytes`` is ``PutObject`` with ``If-None-Match: *``: of concurrent creators
  exactly one wins.
* Backend errors are translated once, in ``S3BucketRepository._call``: missing bucket ->
  :class:`~pydatatask.errors.RepositoryError`; refused credentials, unreachable endpoint
  and exhausted retries -> :class:`~pydatatask.errors.BackendUnavailableError`. Transient
  failures (5xx, throttling, connection errors, timeouts) are retried by one layer only
  (see :class:`S3BucketRepository`). Messages name the bucket and endpoint, never the
  secret key.

The package is split along those concerns: ``_errors`` (what a failure means),
``_bucket`` (the operations), ``_reader`` (resumable streaming reads), ``_writer``
(single and multipart uploads) and ``_metadata`` (the YAML/JSON twins).
"""

from __future__ import annotations

from ._bucket import S3BucketRepository
from ._metadata import JsonMetadataS3Repository, YamlMetadataS3Repository

__all__ = ("S3BucketRepository", "YamlMetadataS3Repository", "JsonMetadataS3Repository")
