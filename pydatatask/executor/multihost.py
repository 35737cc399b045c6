"""Several hosts as one executor: :class:`Hosts`.

A job goes to the member with the most free share of its capacity that fits it now; a
slot on a member that went down moves to another member with room before the work is
prepared (:func:`host_for`); :meth:`Hosts.recover` hands a crashed job's info to the
member it names.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import BackendUnavailableError, ConfigurationError
from .base import Executor, JobHandle, ProcessWork, Resources, Slot, Work
from .hosts import Host, HostUnavailableError

__all__ = ("Hosts", "host_for", "unreserved_slot")


@dataclass(eq=False)
class _MemberSlot(Slot):
    """A slot of :class:`Hosts`: the member host's own slot inside."""

    inner: Slot


class Hosts(Executor):
    """Several hosts as one executor: each job goes to the member with the most free share
    of its capacity that fits the job now; a job whose host went down before it started
    moves to another member with room. Each member keeps its own quota (a host object
    shared with other executors or tasks is one pool).

    :param hosts: the members (unique names).
    :param name: shown in status output (default: the members' names).
    """

    carries: ClassVar[frozenset[type[Work]]] = frozenset({ProcessWork})

    def __init__(self, hosts: Sequence[Host], *, name: str | None = None) -> None:
        members = list(hosts)
        if not members or not all(isinstance(h, Host) for h in members):
            raise ConfigurationError("Hosts needs a non-empty list of Host objects (LocalHost, SSHHost)")
        names = [h.name for h in members]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"Hosts: host names must be unique, got {names}")
        super().__init__(name or "+".join(names))
        self.hosts = members

    def describe(self) -> str:
        return ", ".join(h.name for h in self.hosts)

    def host_named(self, name: Any) -> Host | None:
        """The member called ``name``, or None."""
        return next((h for h in self.hosts if h.name == name), None)

    def fits_at_all(self, resources: Resources) -> bool:
        return any(h.fits_at_all(resources) for h in self.hosts)

    def _pick(self, resources: Resources, exclude: Host | None = None) -> Slot | None:
        now = time.monotonic()
        candidates = [h for h in self.hosts if h is not exclude and h.may_launch(now)]
        # the emptiest first; the first with room for the job takes it
        for host in sorted(candidates, key=lambda h: (-h.free_share(), h.running)):
            slot = host.acquire(resources)
            if slot is not None:
                return slot
        return None

    def acquire(self, resources: Resources) -> Slot | None:
        inner = self._pick(resources)
        if inner is None:
            return None
        return _MemberSlot(self, resources, inner.place, inner)

    def release(self, slot: Slot) -> None:
        if isinstance(slot, _MemberSlot):
            slot.inner.executor.release(slot.inner)

    def member(self, slot: Slot) -> Host:
        """The host ``slot`` reserves room on, moved first to another member with room if
        that host is down; :class:`~pydatatask.executor.hosts.HostUnavailableError` if none has."""
        if not isinstance(slot, _MemberSlot) or slot.executor is not self:
            raise ConfigurationError(f"{self!r}: a slot of another executor ({slot.executor!r})")
        host = slot.inner.executor
        assert isinstance(host, Host)
        if host.is_up():
            return host
        moved = self._pick(slot.resources, exclude=host)
        if moved is None:
            raise HostUnavailableError(
                f"host {host.name} is down ({host.down_reason}) and no other host has room"
            )
        host.release(slot.inner)
        slot.inner = moved
        slot.place = moved.place
        new = moved.executor
        assert isinstance(new, Host)
        return new

    def planned_info(self, work: Work, slot: Slot) -> dict[str, Any]:
        if not isinstance(slot, _MemberSlot):
            return {}
        return slot.inner.executor.planned_info(work, slot.inner)

    async def start(self, work: Work, slot: Slot) -> JobHandle:
        """Start on the host the slot names (:meth:`member` moves a slot off a host that
        went down; a task that renders host paths into the work calls it first)."""
        if not isinstance(slot, _MemberSlot) or slot.executor is not self:
            raise ConfigurationError(f"{self!r}: a slot of another executor ({slot.executor!r})")
        return await slot.inner.executor.start(work, slot.inner)

    async def recover(self, info: Mapping[str, Any]) -> JobHandle | None:
        """Dispatch to the member named in ``info``; a host no longer listed cannot be
        checked (:class:`~pydatatask.errors.BackendUnavailableError`)."""
        host = self.host_named(info.get("host"))
        if host is None:
            raise BackendUnavailableError(
                f"{self!r}: the interrupted job ran on host {info.get('host')!r}, which is not listed any more; "
                "remove its claim with `rm` once its process is surely gone"
            )
        return await host.recover(info)

    async def aclose(self) -> None:
        for host in self.hosts:
            await host.aclose()


def host_for(slot: Slot) -> Host:
    """The host a slot of a :class:`~pydatatask.executor.hosts.Host` or :class:`Hosts`
    reserves room on (moved off a host that went down, see :meth:`Hosts.member`)."""
    executor = slot.executor
    if isinstance(executor, Hosts):
        return executor.member(slot)
    if isinstance(executor, Host):
        if not executor.is_up():
            raise HostUnavailableError(f"host {executor.name} is down ({executor.down_reason})")
        return executor
    raise ConfigurationError(f"{executor!r} is not a host executor")


def unreserved_slot(executor: Host | Hosts, resources: Resources) -> Slot:
    """A slot on the emptiest host of ``executor`` that reserves nothing, for a job run
    outside a scheduler (``task.execute(key)`` in a test or a script): its quota is not
    consulted and nothing needs to be released."""
    if isinstance(executor, Hosts):
        host = max(executor.hosts, key=lambda h: (h.is_up(), h.free_share(), -h.running))
        return _MemberSlot(executor, resources, host.name, Slot(host, resources, host.name))
    return Slot(executor, resources, executor.name)
