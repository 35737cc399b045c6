"""Bundles: the values of several keys of a metadata repository stored as one object.

A bundle is written, replaced and deleted as a whole (one request each), and read key by
key as if each of its keys were stored on its own: listings, ``contains``, ``get`` and
``get_many`` of the repository yield every key a bundle names, with the value
:func:`bundle_member` gives. It is what makes one claim per batch possible in a store
without a transaction over many objects (S3): the claim of a batch of 100 keys is one
object, renewed by one conditional write and dropped by one delete.

A bundle value is a mapping::

    {"shared": {...},          # the value every key of the bundle has
     "keys": ["a", "b", ...],  # the keys it holds, in order
     "own": {"b": {...}}}      # per key, the fields that differ from "shared"

Single-key writes keep their meaning for the keys of a bundle: ``delete`` removes the key
from its bundle (the bundle shrinks, or goes when it is left empty), ``replace_if`` of a
key whose value (as the bundle gives it) is the one expected moves the key out of its
bundle into an object of its own, and ``create`` of a key a bundle names answers False.

Stores that can keep bundles implement :class:`BundleStore`; :func:`bundle_store` finds
one behind a repository.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast, runtime_checkable

from .base import MetadataRepository
from .deferred import DeferredMetadataRepository

__all__ = (
    "BundleStore",
    "bundle_store",
    "bundle_member",
    "bundle_keys",
    "bundle_holders",
    "bundle_without",
    "make_bundle",
)


def make_bundle(
    shared: Mapping[str, Any], keys: list[str], own: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A bundle value: ``shared`` for every key of ``keys``, with ``own`` fields per key."""
    return {"shared": dict(shared), "keys": list(keys), "own": {k: dict(v) for k, v in (own or {}).items()}}


def bundle_keys(bundle: Any) -> list[str]:
    """The keys a bundle value holds (none when it is not a bundle)."""
    if not isinstance(bundle, dict):
        return []
    keys = bundle.get("keys")
    if not isinstance(keys, list):
        return []
    return [k for k in keys if isinstance(k, str)]


def bundle_member(bundle: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The value of ``key`` in ``bundle``: its shared fields with the key's own over them."""
    shared = bundle.get("shared")
    own = bundle.get("own")
    value = dict(shared) if isinstance(shared, dict) else {}
    mine = own.get(key) if isinstance(own, dict) else None
    if isinstance(mine, dict):
        value.update(mine)
    return value


def bundle_without(bundle: dict[str, Any], rest: list[str]) -> dict[str, Any]:
    """``bundle`` holding only the keys ``rest`` (their own fields kept)."""
    own = bundle.get("own")
    kept = {k: v for k, v in own.items() if k in rest} if isinstance(own, dict) else {}
    return dict(bundle, keys=rest, own=kept)


def bundle_holders(bundles: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """Each key the ``bundles`` (by name) hold, with the name of the first bundle, in name
    order, that holds it."""
    out: dict[str, str] = {}
    for name, bundle in sorted(bundles.items()):
        for key in bundle_keys(bundle):
            out.setdefault(key, name)
    return out


@runtime_checkable
class BundleStore(Protocol):
    """A metadata repository that keeps bundles (see the module's description).

    Bundles have names of their own (``name``: letters, digits, ``-`` and ``_``), kept
    apart from the keys: no key can name a bundle's object.
    """

    @property
    def supports_bundles(self) -> bool:
        """Whether this repository, as configured, can keep bundles."""

    def expect_bundles(self) -> None:
        """Look for bundles in single-key lookups and writes from now on (they are always
        seen by listings; a repository that has never seen one skips the extra request)."""

    async def create_bundle(self, name: str, bundle: dict[str, Any]) -> bool:
        """Store ``bundle`` as ``name`` if there is no such bundle; whether it was stored."""

    async def get_bundle(self, name: str) -> dict[str, Any] | None:
        """The bundle ``name`` as stored now, or None if there is none."""

    async def replace_bundle_if(self, name: str, expected: dict[str, Any], bundle: dict[str, Any]) -> bool:
        """Replace bundle ``name`` by ``bundle`` if it is still ``expected`` (compare-and-swap)."""

    async def delete_bundle(self, name: str) -> None:
        """Remove bundle ``name`` (nothing happens when there is none)."""

    async def delete_unbundled(self, keys: list[str]) -> None:
        """Remove the objects of ``keys`` stored on their own, leaving every bundle as it is
        (what ``delete`` of a key would take out of someone else's bundle stays there)."""

    async def snapshot(self) -> tuple[set[str], dict[str, dict[str, Any]]]:
        """From one listing: the keys stored on their own, and every bundle by name."""


#: whether a class has every member of :class:`BundleStore` (its instances are then bundle
#: stores), by class: asked at each claim's release, where ``isinstance`` with the protocol
#: (which looks up each of its members on the object, every time) cost more than the unlink
#: of the claim; a class without them may still make instances that have them (through
#: ``__getattr__``), which ``isinstance`` is then asked about
_STORE_CLASSES: dict[type, bool] = {}


def _store_class(cls: type) -> bool:
    known = _STORE_CLASSES.get(cls)
    if known is None:
        members = [m for m in vars(BundleStore) if not m.startswith("_")]
        known = _STORE_CLASSES[cls] = all(hasattr(cls, m) for m in members)
    return known


def bundle_store(repo: MetadataRepository) -> BundleStore | None:
    """The :class:`BundleStore` behind ``repo`` (a deferred repository's current store
    included), if it can keep bundles; else None."""
    target = repo.target if isinstance(repo, DeferredMetadataRepository) else repo
    if _store_class(type(target)) or isinstance(target, BundleStore):
        store = cast(BundleStore, target)
        if store.supports_bundles:
            return store
    return None
