"""Claims: who runs the job of a key, as values in a task's ``live`` repository.

A :class:`Claims` object is the whole protocol, used by the job lifecycle of every task
kind:

* :meth:`Claims.acquire` creates the claim if absent (the atomic step: of several
  schedulers, exactly one gets it); :meth:`Claims.acquire_many` does it for the keys of a
  batch at once (each key still to exactly one scheduler), :meth:`Claims.release_many`
  drops them together;
* :meth:`Claims.update` and :meth:`Claims.heartbeat` change a held claim by compare-and-swap
  (a conditional replace), so a scheduler that was presumed dead never overwrites the claim
  of the one that took over; it learns that the claim is lost instead;
* :meth:`Claims.is_stale` judges a claim found in ``live`` (lease, boot id, PID namespace,
  pid and its start time; see :func:`~pydatatask.task.records.pid_is_comparable`);
* :meth:`Claims.take_over` replaces a stale claim by a recovery claim of this process, by
  compare-and-swap: of several schedulers recovering it, one wins;
* :meth:`Claims.update_many` changes the claims of a batch together;
* :meth:`Claims.release` drops a claim; :meth:`Claims.abandon` hands it to nobody with an
  expired heartbeat, so that the next check of any scheduler recovers it (used when the
  partial outputs of a job could not be removed: freeing the key would leave an output
  without a record).

The claims this process holds are :meth:`Claims.held`; nothing else keeps claim state.

Where ``live`` keeps bundles (S3, local files), the claims of a batch are one object: see
:mod:`pydatatask.task.batch_claims` (the same methods, the same guarantees).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import KeyNotFoundError, UnsupportedOperationError
from ..repository.base import MetadataRepository
from ..repository.bundles import bundle_store
from ..repository.deferred import DeferredMetadataRepository
from ..repository.memory import MemoryMetadataRepository
from . import batch_claims
from .batch_claims import BatchClaim
from .records import HOSTNAME, make_claim, pid_is_comparable, process_start_time

__all__ = ("Claim", "Claims", "new_owner", "process_memory")

_T = TypeVar("_T")


def process_memory(repo: MetadataRepository, *, writing: bool = False) -> MemoryMetadataRepository | None:
    """The :class:`~pydatatask.repository.memory.MemoryMetadataRepository` of this process
    that ``repo`` stores its values in (``repo`` itself, or the store a task's default
    state repository is bound to), or None for any other store (files, S3, MongoDB, a
    subclass of the memory repository: those keep every step of the protocol).

    Nothing outside this process sees such a store, so a job's claim and record there are
    plain dict operations (see :meth:`Claims.acquire_local`). ``writing``: the caller is
    about to write through it (a default store written to cannot be rebound)."""
    if isinstance(repo, DeferredMetadataRepository):
        target = repo.target
        if type(target) is not MemoryMetadataRepository:
            return None
        if writing:
            repo._writing()
        return target
    return repo if type(repo) is MemoryMetadataRepository else None


def new_owner() -> str:
    """A fresh owner name for claims: host, pid and a random part."""
    return f"{HOSTNAME}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(eq=False)
class Claim:
    """A claim this process holds: the key and the value stored in ``live`` (kept equal
    to the stored one by every successful :meth:`Claims.update`), and the batch's one
    object when it is stored as a part of one."""

    key: str
    value: dict[str, Any]
    batch: BatchClaim | None = None


class Claims:
    """The claims of one task in its ``live`` repository.

    :param live: where claims are stored (create-if-absent and conditional replace are used
        where the backend has them).
    :param task: the task name written into each claim.
    :param owner: the owner written into claims (default: a fresh :func:`new_owner`);
        :meth:`acquire` takes another per call (a scheduler's own name).
    :param lease: seconds a claim stays valid without a heartbeat.
    """

    def __init__(
        self, live: MetadataRepository, task: str, owner: str | None = None, lease: float = 60.0
    ) -> None:
        self.live = live
        self.task = task
        self.owner = owner or new_owner()
        self.lease = lease
        self._held: dict[str, Claim] = {}
        #: whether this task runs batches (then ``live`` is looked at for batch claims by
        #: single-key claims too)
        self.batched = False
        # the conditional replace of a held claim under way, by key: a release waits for it
        # (a replace that read the claim before a delete must not write it back after)
        self._replacing: dict[str, asyncio.Future[Any]] = {}
        # updates of one task's claims are serialised: a heartbeat and a note of a written
        # key must not both replace the same old value
        self._lock = asyncio.Lock()

    def held(self) -> Mapping[str, Claim]:
        """The claims this process holds, by key."""
        return self._held

    def get(self, key: str) -> Claim | None:
        """The claim held on ``key``, or None."""
        return self._held.get(key)

    async def acquire(self, key: str, owner: str | None = None, **fields: Any) -> Claim | None:
        """Create the claim on ``key`` if there is none; None if someone holds it.
        ``fields`` are added to the claim."""
        value = make_claim(owner or self.owner, self.task, key, time.time(), self.lease)
        value.update(fields)
        if self.batched and (store := bundle_store(self.live)) is not None:
            store.expect_bundles()  # a batch's claim may name the key
        if not await self.live.create(key, value):
            return None
        claim = self._held[key] = Claim(key, value)
        return claim

    async def acquire_many(
        self, keys: list[str], owner: str | None = None, **fields: Any
    ) -> dict[str, Claim]:
        """:meth:`acquire` for several keys at once (one bulk create where the backend has
        one, or one object for them all where ``live`` keeps bundles); returns the claims
        made, by key. Keys someone else holds are left out."""
        store = bundle_store(self.live)
        if store is not None and len(keys) > 1:
            return await batch_claims.acquire(self, store, keys, owner or self.owner, fields)
        if store is not None and self.batched:
            store.expect_bundles()  # a batch of one key: another batch's claim may name it
        now = time.time()
        values: dict[str, dict[str, Any]] = {}
        template: dict[str, Any] | None = None
        for key in keys:
            if template is None:
                template = make_claim(owner or self.owner, self.task, key, now, self.lease)
                template.update(fields)
            values[key] = dict(template, key=key)
        created = await self.live.create_many(values)
        held: dict[str, Claim] = {}
        for key in keys:
            if key in created:
                self._held[key] = held[key] = Claim(key, values[key])
        return held

    def acquire_local(
        self,
        store: MemoryMetadataRepository,
        key: str,
        owner: str | None = None,
        *,
        value: dict[str, Any] | None = None,
    ) -> Claim | None:
        """:meth:`acquire` where ``live`` stores in ``store``, memory of this process (see
        :func:`process_memory`): the same claim, made at once, for a ``key`` that was
        checked when it was listed. ``value``: the claim made by the caller (what
        :func:`~pydatatask.task.records.make_claim` makes, handed over)."""
        if value is None:
            value = make_claim(owner or self.owner, self.task, key, time.time(), self.lease)
        if not store.create_now(key, value):
            return None
        claim = self._held[key] = Claim(key, value)
        return claim

    def release_local(self, store: MemoryMetadataRepository, claim: Claim) -> None:
        """:meth:`release` where ``live`` stores in ``store``, memory of this process."""
        if self._held.get(claim.key) is claim:
            del self._held[claim.key]
        store.delete_now(claim.key)

    async def update(self, claim: Claim, **fields: Any) -> bool:
        """Add ``fields`` to a held claim and renew its heartbeat, by compare-and-swap.

        Returns False if the claim is lost (taken over or deleted by someone else; it is no
        longer held then). A claim released meanwhile (its job has ended) is left alone and
        counts as not lost. Backends without conditional replace fall back to re-checking
        the owner. Where ``live`` is memory of this process (:func:`process_memory`) the
        replace is a dict operation, done at once.
        """
        if claim.batch is None and not self._replacing and not self._lock.locked():
            store = process_memory(self.live)
            if store is not None:
                return self._update_local(store, claim, fields)
        async with self._lock:
            await self._settle([claim.key])  # after the write of a heartbeat cancelled meanwhile
            if self._held.get(claim.key) is not claim:
                return True  # released (or never ours): nothing to renew, nothing lost
            if claim.batch is not None:
                return not await self._batch_op([claim], batch_claims.update(self, [claim], fields))
            old = claim.value
            new = dict(old, **fields, heartbeat=time.time())
            # shielded: a cancelled heartbeat must not leave the write running unseen (a
            # backend may write from a thread that goes on), see _settle
            op = asyncio.ensure_future(self._replace(claim.key, old, new))
            self._replacing[claim.key] = op
            op.add_done_callback(functools.partial(self._replaced, claim, new))
            ok = await asyncio.shield(op)
            if ok:
                claim.value = new
            if self._held.get(claim.key) is not claim:
                return True  # released while the replace was under way
            if not ok:
                del self._held[claim.key]
            return ok

    def _update_local(self, store: MemoryMetadataRepository, claim: Claim, fields: dict[str, Any]) -> bool:
        """:meth:`update` of a single claim where ``live`` stores in ``store``, memory of
        this process: no replace can be under way, so the compare-and-swap is made here."""
        if self._held.get(claim.key) is not claim:
            return True  # released (or never ours): nothing to renew, nothing lost
        new = dict(claim.value, **fields, heartbeat=time.time())
        if store.replace_now(claim.key, claim.value, new):
            claim.value = new
            return True
        del self._held[claim.key]
        return False

    async def update_many(self, claims: list[Claim], **fields: Any) -> list[Claim]:
        """:meth:`update` for several claims (one write per batch's object where the claims
        are parts of one); returns the claims lost."""
        parts: dict[int, list[Claim]] = {}
        single: list[Claim] = []
        for claim in claims:
            if claim.batch is not None:
                parts.setdefault(id(claim.batch), []).append(claim)
            else:
                single.append(claim)
        if len(single) == 1:
            lost = [] if await self.update(single[0], **fields) else single
        else:
            lost = await self._update_apart(single, fields)
        for members in parts.values():
            async with self._lock:
                await self._settle([c.key for c in members])
                held = [c for c in members if self._held.get(c.key) is c]
                if held:
                    lost += await self._batch_op(held, batch_claims.update(self, held, fields))
        return lost

    async def _update_apart(self, claims: list[Claim], fields: dict[str, Any]) -> list[Claim]:
        """:meth:`update` of ``claims`` held as objects of their own, with one
        ``replace_many_if`` (a fixed number of round trips where the backend has a bulk
        write); returns the claims lost."""
        async with self._lock:
            await self._settle([c.key for c in claims])
            held = [c for c in claims if self._held.get(c.key) is c]
            if not held:
                return []
            now = time.time()
            news = {c.key: dict(c.value, **fields, heartbeat=now) for c in held}
            changes = {c.key: (c.value, news[c.key]) for c in held}
            # shielded, and tracked as single replaces are (see update and _settle)
            op: asyncio.Future[set[str]] = asyncio.ensure_future(self._replace_many(changes))
            for c in held:
                self._replacing[c.key] = op
            op.add_done_callback(functools.partial(self._replaced_many, held, news))
            replaced = await asyncio.shield(op)
            lost = []
            for c in held:
                if c.key in replaced:
                    c.value = news[c.key]
                elif self._held.get(c.key) is c:  # (released meanwhile: not lost)
                    del self._held[c.key]
                    lost.append(c)
            return lost

    async def _replace_many(self, changes: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> set[str]:
        try:
            return await self.live.replace_many_if(changes)
        except UnsupportedOperationError:
            items = list(changes.items())
            done = await asyncio.gather(*(self._replace(k, old, new) for k, (old, new) in items))
            return {k for (k, _change), ok in zip(items, done, strict=True) if ok}

    def _replaced_many(
        self, claims: list[Claim], news: dict[str, dict[str, Any]], op: asyncio.Future[set[str]]
    ) -> None:
        """The end of a :meth:`_replace_many` (as :meth:`_replaced`, for each claim)."""
        replaced = op.result() if not op.cancelled() and op.exception() is None else set()
        for claim in claims:
            if self._replacing.get(claim.key) is op:
                del self._replacing[claim.key]
            if claim.key in replaced:
                claim.value = news[claim.key]

    async def _replace(self, key: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        try:
            return bool(await self.live.replace_if(key, old, new))
        except UnsupportedOperationError:
            try:
                ok = bool((await self.live.get(key)).get("owner") == old.get("owner"))
            except KeyNotFoundError:
                ok = False
            if ok:
                await self.live.put(key, new)
            return ok

    def _replaced(self, claim: Claim, new: dict[str, Any], op: asyncio.Future[Any]) -> None:
        """The end of a replace of ``claim`` by ``new``: the stored value is kept (also when
        the heartbeat that made it was cancelled meanwhile, so the next one compares with
        what is stored)."""
        if self._replacing.get(claim.key) is op:
            del self._replacing[claim.key]
        if not op.cancelled() and op.exception() is None and op.result():
            claim.value = new

    async def _batch_op(self, members: list[Claim], work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work``, a change of the one object of the batch of ``members``, shielded and
        known to :meth:`_settle` under every key of the batch, as a single replace is (a
        cancelled heartbeat's write must not land after the release that follows it)."""
        batch = members[0].batch
        keys = {c.key for c in members} | set(batch.keys() if batch is not None else ())
        op = asyncio.ensure_future(work)
        for key in keys:
            self._replacing[key] = op
        op.add_done_callback(functools.partial(self._batch_op_ended, keys))
        return await asyncio.shield(op)

    def _batch_op_ended(self, keys: set[str], op: asyncio.Future[Any]) -> None:
        for key in keys:
            if self._replacing.get(key) is op:
                del self._replacing[key]
        if not op.cancelled():
            op.exception()  # seen here when the caller was cancelled meanwhile

    async def _settle(self, keys: list[str]) -> None:
        """Wait for the replaces of ``keys`` under way to end: a replace that read a claim
        just before its release deleted it would otherwise write it back after, leaving a
        claim of a finished job that holds its key until the lease runs out."""
        ops = [op for k in keys if (op := self._replacing.get(k)) is not None]
        if ops:
            await asyncio.wait(ops)  # (never cancels them, even when this wait is cancelled)

    async def heartbeat(self, claim: Claim) -> bool:
        """Renew a held claim; False if it is lost."""
        return await self.update(claim)

    async def release(self, claim: Claim) -> None:
        """Drop the claim (from ``live`` too)."""
        if self._held.get(claim.key) is claim:
            del self._held[claim.key]
        if claim.batch is not None:
            async with self._lock:
                await self._settle([claim.key])
                await self._batch_op([claim], batch_claims.release(self, [claim]))
            return
        await self._settle([claim.key])
        await self._delete_own([claim.key])

    async def release_many(self, claims: list[Claim]) -> None:
        """:meth:`release` for several claims at once (one bulk delete where the backend has
        one)."""
        keys = []
        parts: dict[int, list[Claim]] = {}
        for claim in claims:
            if self._held.get(claim.key) is claim:
                del self._held[claim.key]
            if claim.batch is not None:
                parts.setdefault(id(claim.batch), []).append(claim)
            else:
                keys.append(claim.key)
        for members in parts.values():
            async with self._lock:
                await self._settle([c.key for c in members])
                await self._batch_op(members, batch_claims.release(self, members))
        if keys:
            await self._settle(keys)
            await self._delete_own(keys)

    async def _delete_own(self, keys: list[str]) -> None:
        """Remove the claims of ``keys`` held as objects of their own. Where ``live`` keeps
        bundles, only those objects: ``delete`` would also take the keys out of another
        scheduler's batch claim made meanwhile (one that gives the keys up, or whose writer
        runs them once this claim is gone)."""
        store = bundle_store(self.live)
        if store is not None:
            await store.delete_unbundled(keys)
        elif len(keys) == 1:
            await self.live.delete(keys[0])
        else:
            await self.live.delete_many(keys)

    def forget(self, claim: Claim) -> None:
        """Stop holding ``claim`` without touching ``live`` (it was handed on)."""
        if self._held.get(claim.key) is claim:
            del self._held[claim.key]

    async def abandon(self, claim: Claim) -> None:
        """Hand the claim to nobody with an expired heartbeat: the next check of any
        scheduler finds it stale and recovers the key (removes what the job left, then
        frees it). The claim keeps what it noted (``wrote``)."""
        self.forget(claim)
        if claim.batch is not None:
            async with self._lock:
                await self._settle([claim.key])
                await self._batch_op([claim], batch_claims.abandon(self, claim))
            return
        await self._settle([claim.key])
        value = claim.value
        abandoned = dict(value, owner=f"{value.get('owner')}-abandoned", heartbeat=0.0)
        await self.live.replace_if(claim.key, value, abandoned)

    def expires(self, value: Any) -> float | None:
        """When a claim found in ``live`` goes stale by its lease (epoch seconds), or None
        if never (no heartbeat recorded)."""
        if not isinstance(value, dict):
            return None
        heartbeat = value.get("heartbeat", value.get("started"))
        lease = value.get("lease", self.lease)
        if isinstance(heartbeat, (int, float)) and isinstance(lease, (int, float)):
            return float(heartbeat + lease)
        return None

    def is_stale(self, value: Any, now: float | None = None, *, owner: str | None = None) -> bool:
        """Whether a claim found in ``live`` belongs to a job that cannot be running.

        Stale: any claim whose heartbeat is older than its lease (its owner died, lost its
        connection or was paused), or, at once, a claim whose process is gone (its pid is
        dead, or belongs to a process with another start time). The pid is looked at only
        when the claim was made on this boot of this kernel in this process's PID
        namespace (:func:`~pydatatask.task.records.pid_is_comparable`): elsewhere the
        same pid names an unrelated process or none. A claim made in another container,
        on another host, before a reboot or by a version that did not record its boot and
        namespace is judged by its lease alone; one without a heartbeat at all is never
        taken over. Claims of ``owner`` (default: this object's owner; the scheduler
        tracks its own jobs) are never stale; a value that is not a claim is.
        """
        if not isinstance(value, dict):
            return True
        if value.get("owner") == (owner or self.owner):
            return False
        expires = self.expires(value)
        if expires is not None and (time.time() if now is None else now) > expires:
            return True
        if not pid_is_comparable(value):
            return False
        pid = value.get("pid")
        if type(pid) is not int or pid <= 0:
            return False  # no process named: only the lease can tell
        start = process_start_time(pid)
        return start is None or (value.get("pid_start") is not None and start != value.get("pid_start"))

    async def take_over(self, key: str, value: Any, **fields: Any) -> Claim | None:
        """Replace the stale claim ``value`` on ``key`` by a recovery claim of this process
        (compare-and-swap); None if another scheduler changed it first.

        The recovery claim keeps the keys the old job noted (``wrote``), so that a cleanup
        that fails leaves them to the next recovery; ``fields`` are added to it. On backends
        without conditional replace the takeover is best effort.
        """
        takeover = make_claim(f"{self.owner}-recovery", self.task, key, time.time(), self.lease)
        written = value.get("wrote") if isinstance(value, dict) else None
        if written:
            takeover["wrote"] = written
        takeover.update(fields)
        try:
            won = await self.live.replace_if(key, value, takeover)
        except UnsupportedOperationError:
            won = True
            await self.live.put(key, takeover)
        if not won:
            return None
        claim = self._held[key] = Claim(key, takeover)
        return claim
