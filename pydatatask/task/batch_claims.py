"""One claim per batch: the claims of a batch's keys as one object in ``live``.

Where the ``live`` repository keeps bundles (:mod:`pydatatask.repository.bundles`: the S3
metadata repositories, and the YAML and JSON file ones of every ``state_dir``),
:meth:`Claims.acquire_many <pydatatask.task.claims.Claims.acquire_many>`
writes the claims of a batch as one bundle: ``{"shared": claim, "keys": [...], "own": {...}}``,
named by the batch's id. Every reader of ``live`` (readiness, ``status``, the check for
stale claims) sees one claim per key, as before: the repository lists a bundle's keys and
gives each the shared claim with its own fields (``wrote``, ``run``) over it. Other backends
(memory, Mongo: one round trip for the batch already) keep a claim per key.

Why this is safe without an atomic create per key. Two schedulers that both claim a key
each write their bundle first, then list ``live`` (one ``ListObjectsV2``: S3 listings are
strongly consistent) and give up, before running anything, every key that another claim
(a bundle or a key's own object, live or stale) also names (a file repository reads its
directory for it under the lock every change of a bundle takes, so the scan misses none
that exists). Of two such writes, the later
one's writer lists after the earlier one's write, so at least one of them sees the other:
one of them, or both, give the key up; never both run it. Both may give up (the key comes
back at the next tick, with the scheduler's jitter). A claim that is gone by the time of
the listing was dropped after its job's record was written, and the check of ``done``
that follows the listing finds that record.

The batch's one object is renewed by one conditional write (``If-Match`` its ETag: a
heartbeat for the whole batch, and what a batch notes for its keys, such as the work it
runs), and dropped by one delete when the batch ends (keys that end earlier leave it by a
conditional write). A batch whose scheduler died goes stale as one object, and is
recovered key by key as claims always were: the takeover of a key moves it out of the
bundle (its recovery claim created as an object of its own, then the key removed from the
bundle by compare-and-swap; the one whose swap succeeds recovers it). A scheduler that
finds its bundle changed by someone else reads it back: the keys still in it are still its
own, the others were lost.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import RepositoryError
from ..repository.bundles import BundleStore, bundle_keys, bundle_member, make_bundle
from .records import make_claim

if TYPE_CHECKING:
    from .claims import Claim, Claims

__all__ = ("BatchClaim",)

log = logging.getLogger("pydatatask.task")

#: rounds of compare-and-swap on a batch's object that someone else changes meanwhile
_ROUNDS = 8


@dataclass(eq=False)
class BatchClaim:
    """The one object in ``live`` that holds the claims of a batch (a bundle)."""

    #: the bundle's name (the batch's id)
    name: str
    #: the bundle as this process last stored or read it
    value: dict[str, Any]
    #: when this process last renewed it (epoch seconds)
    renewed: float
    store: BundleStore

    def keys(self) -> list[str]:
        """The keys the bundle holds."""
        return bundle_keys(self.value)


async def acquire(
    claims: Claims, store: BundleStore, keys: list[str], owner: str, fields: dict[str, Any]
) -> dict[str, Claim]:
    """Claim ``keys`` with one bundle; return the claims kept (the keys no other claim
    names), by key."""
    from .claims import Claim

    now = time.time()
    shared = make_claim(owner, claims.task, keys[0], now, claims.lease)
    del shared["key"]  # each key's claim is read through the bundle
    shared.update(fields)
    batch = fields.get("batch")
    name = f"{batch}-{uuid.uuid4().hex[:8]}" if isinstance(batch, str) else uuid.uuid4().hex
    bundle = make_bundle(shared, keys)
    if not await store.create_bundle(name, bundle):
        return {}  # a name taken: never with a random part; the keys stay free
    try:
        plain, bundles = await store.snapshot()
    except BaseException:
        await store.delete_bundle(name)
        raise
    taken = set(plain)
    for other, value in bundles.items():
        if other != name:
            taken.update(bundle_keys(value))
    mine = [k for k in keys if k not in taken]
    if len(mine) < len(keys):
        log.debug(
            "task %s: batch %s gives up %d key(s) another claim names (e.g. %r)",
            claims.task,
            name,
            len(keys) - len(mine),
            next(k for k in keys if k in taken),
        )
        if not mine:
            await store.delete_bundle(name)
            return {}
        smaller = make_bundle(shared, mine)
        if not await store.replace_bundle_if(name, bundle, smaller):
            await store.delete_bundle(name)  # changed by someone: claim nothing of it
            return {}
        bundle = smaller
    claim = BatchClaim(name, bundle, now, store)
    held: dict[str, Claim] = {}
    for key in mine:
        held[key] = claims._held[key] = Claim(key, bundle_member(bundle, key), claim)
    return held


def _own(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    own = bundle.get("own")
    return {k: dict(v) for k, v in own.items() if isinstance(v, dict)} if isinstance(own, dict) else {}


async def change(
    claims: Claims, batch: BatchClaim, mutate: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> set[str]:
    """Store ``mutate(bundle)`` (None: delete the bundle) by compare-and-swap, again on
    the bundle as stored when someone else changed it. Returns the keys lost: held by
    this process, but gone from the bundle (or the bundle gone) when someone else changed
    it (they are no longer held). A claim this process released meanwhile is not lost."""
    store = batch.store
    value = batch.value
    lost: set[str] = set()
    for _ in range(_ROUNDS):
        new = mutate(value)
        if new is None:
            await store.delete_bundle(batch.name)
            _settle(claims, batch, None)
            return lost
        if await store.replace_bundle_if(batch.name, value, new):
            batch.value = new
            batch.renewed = time.time()
            lost |= _settle(claims, batch, new)
            return lost
        current = await store.get_bundle(batch.name)
        lost |= _settle(claims, batch, current)
        if current is None:
            return lost
        value = batch.value = current
    raise RepositoryError(
        f"task {claims.task}: the claim of batch {batch.name} kept changing under this scheduler"
    )


def _settle(claims: Claims, batch: BatchClaim, bundle: dict[str, Any] | None) -> set[str]:
    """The held claims of ``batch``: gone if not in ``bundle`` (None: the bundle is gone),
    else its value. Returns the keys that stopped being held."""
    keys = set(bundle_keys(bundle)) if bundle is not None else set()
    gone: set[str] = set()
    for key, claim in list(claims._held.items()):
        if claim.batch is not batch:
            continue
        if bundle is not None and key in keys:
            claim.value = bundle_member(bundle, key)
        else:
            del claims._held[key]  # moved out by someone else, or the bundle removed: lost
            gone.add(key)
    return gone


async def update(claims: Claims, members: list[Claim], fields: dict[str, Any]) -> list[Claim]:
    """Add ``fields`` to the claims ``members`` (all of one batch) and renew the batch;
    return those lost. Without fields, a renewal soon after the last one is skipped."""
    batch = members[0].batch
    assert batch is not None
    now = time.time()
    if not fields and now - batch.renewed < claims.lease / 6:
        return []
    keys = {c.key for c in members}

    def mutate(bundle: dict[str, Any]) -> dict[str, Any]:
        shared = dict(bundle.get("shared") or {}, heartbeat=time.time())
        own = _own(bundle)
        held = bundle_keys(bundle)
        if fields and keys >= set(held):
            shared.update(fields)  # every key alike: once, not per key
            for k in held:
                for f in fields:
                    own.get(k, {}).pop(f, None)
        elif fields:
            for k in keys:
                if k in held:
                    own[k] = {**own.get(k, {}), **fields}
        return make_bundle(shared, held, {k: v for k, v in own.items() if v})

    # only the keys the bundle lost count: a member released meanwhile (its job ended,
    # while this renewal was under way) is not held any more, and not lost either
    lost = await change(claims, batch, mutate)
    return [c for c in members if c.key in lost]


async def release(claims: Claims, members: list[Claim]) -> None:
    """Take the keys of ``members`` (all of one batch) out of it; the last ones delete it."""
    batch = members[0].batch
    assert batch is not None
    gone = {c.key for c in members}

    def mutate(bundle: dict[str, Any]) -> dict[str, Any] | None:
        rest = [k for k in bundle_keys(bundle) if k not in gone]
        if not rest:
            return None
        own = _own(bundle)
        return make_bundle(
            dict(bundle.get("shared") or {}), rest, {k: v for k, v in own.items() if k in rest}
        )

    await change(claims, batch, mutate)


async def abandon(claims: Claims, claim: Claim) -> None:
    """Hand the key of ``claim`` to nobody with an expired heartbeat, in its batch."""
    batch = claim.batch
    assert batch is not None
    key = claim.key

    def mutate(bundle: dict[str, Any]) -> dict[str, Any]:
        own = _own(bundle)
        owner = bundle_member(bundle, key).get("owner")
        own[key] = {**own.get(key, {}), "owner": f"{owner}-abandoned", "heartbeat": 0.0}
        return make_bundle(dict(bundle.get("shared") or {}), bundle_keys(bundle), own)

    await change(claims, batch, mutate)
