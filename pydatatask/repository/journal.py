"""Write journals: which keys a piece of work wrote, in which repositories.

A :class:`WriteJournal` is made current for a block of code with :func:`journaling`; every
write made in that block (and in asyncio tasks it starts, which inherit the context) through
the repository write paths - ``put``, ``create``, ``replace_if``, ``open(key, "wb")``,
``write_bytes``, ``create_bytes``, ``replace_bytes_if`` - is noted in it *before* the value
becomes visible, so that work which fails half-way can remove everything it wrote, also
keys other than the one it was started for. The task layer keeps one journal per running
job (see ``Task.cleanup_outputs``).

Writes through a view are noted at each layer that implements the write (at least the
underlying repository, with the underlying key). Writes that do not go through a
repository object - a process or a pod writing files or objects directly - cannot be
noted. Without a current journal the cost of a write is one ``ContextVar.get``.

This module knows nothing of tasks.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Repository

__all__ = (
    "WriteJournal",
    "journaling",
    "enter_journal",
    "leave_journal",
    "current_journal",
    "note_write",
    "visible_keys",
)

_current: contextvars.ContextVar[WriteJournal | None] = contextvars.ContextVar(
    "pydatatask_write_journal", default=None
)


class WriteJournal:
    """The ``(repository, key)`` pairs written by one piece of work, in the order of their
    first write (each pair once).

    :param before_new_write: awaited by the write paths for each pair noted for the first
        time, before the value can become visible (e.g. to store the pair where a later
        process finds it if this one dies). An exception from it fails the write.
    """

    __slots__ = ("_entries", "_before_new_write")

    def __init__(self, before_new_write: Callable[[Repository, str], Awaitable[None]] | None = None) -> None:
        self._entries: dict[tuple[int, str], tuple[Repository, str]] = {}
        self._before_new_write = before_new_write

    def record(self, repository: Repository, key: str) -> bool:
        """Note that ``key`` of ``repository`` is (about to be) written; return whether
        the pair is new."""
        ident = (id(repository), key)
        if ident in self._entries:
            return False
        self._entries[ident] = (repository, key)
        return True

    async def note(self, repository: Repository, key: str) -> None:
        """:meth:`record`, then await ``before_new_write`` if the pair is new."""
        if self.record(repository, key) and self._before_new_write is not None:
            await self._before_new_write(repository, key)

    def clear(self) -> None:
        """Forget every pair (a journal used again for the next piece of work)."""
        self._entries.clear()

    def discard(self, repository: Repository, key: str) -> None:
        """Forget ``key`` of ``repository`` (e.g. once it has been deleted again)."""
        self._entries.pop((id(repository), key), None)

    def entries(self) -> list[tuple[Repository, str]]:
        """The pairs noted so far."""
        return list(self._entries.values())

    def keys_by_repository(self) -> dict[int, set[str]]:
        """``{id(repository): keys}`` of the pairs noted so far."""
        out: dict[int, set[str]] = {}
        for repo_id, key in self._entries:
            out.setdefault(repo_id, set()).add(key)
        return out

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<WriteJournal of {len(self._entries)} write(s)>"


class _Journaling:
    """The context manager of :func:`journaling` (a class: entered once per job, it costs
    a fraction of a generator-based one)."""

    __slots__ = ("_journal", "_token")

    def __init__(self, journal: WriteJournal) -> None:
        self._journal = journal

    def __enter__(self) -> WriteJournal:
        self._token = _current.set(self._journal)
        return self._journal

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)


def journaling(journal: WriteJournal) -> AbstractContextManager[WriteJournal]:
    """Make ``journal`` current for the block (and the asyncio tasks it creates)."""
    return _Journaling(journal)


def enter_journal(journal: WriteJournal | None) -> contextvars.Token[WriteJournal | None]:
    """Make ``journal`` current until :func:`leave_journal` of the token returned (what
    :func:`journaling` does around a block, for a caller that keeps one journal current
    over many pieces of work)."""
    return _current.set(journal)


def leave_journal(token: contextvars.Token[WriteJournal | None]) -> None:
    """Undo the :func:`enter_journal` that returned ``token``."""
    _current.reset(token)


def current_journal() -> WriteJournal | None:
    """The journal writes are noted in now, if any."""
    return _current.get()


async def note_write(repository: Repository, key: str) -> None:
    """Note a write of ``key`` in ``repository`` in the current journal, if there is one.

    Backends that write outside the base class's write paths (an overridden
    ``write_bytes``, a directory installed in place) await this before the value becomes
    visible.
    """
    journal = _current.get()
    if journal is not None:
        await journal.note(repository, key)


def visible_keys(repository: Repository, written: Mapping[int, set[str]]) -> set[str]:
    """The keys under which writes noted in ``written`` (``{id(repository): keys}``) appear
    in ``repository``, looking through views (anything with ``children``) down to the
    repositories written.

    A view that renames keys (one with ``from_child``) maps them; other views are taken to
    show their children's keys as they are, which may name a key the view does not show
    (callers use the result to hold keys back, so an extra key only errs on the safe side).
    """
    out = set(written.get(id(repository), ()))
    children: Iterable[Repository] = getattr(repository, "children", ())
    if not children:
        return out
    from_child = getattr(repository, "from_child", None)
    for child in children:
        below = visible_keys(child, written)
        if not below:
            continue
        if callable(from_child):
            for key in below:
                try:
                    mapped = from_child(key)
                except Exception:  # a mapping that refuses a key hides it from the view
                    continue
                if isinstance(mapped, str):
                    out.add(mapped)
        else:
            out |= below
    return out
