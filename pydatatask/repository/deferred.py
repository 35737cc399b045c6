"""A metadata repository whose backing store is chosen once, after it was handed out.

A task's default ``done`` and ``live`` repositories are of this kind: the task is built
(and a user may build views over ``task.done``) before the pipeline decides, from its
``state_dir``, where the records are stored. The pipeline then *binds* the store; every
object obtained earlier keeps working, because it is this same object.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import ConfigurationError
from .base import MetadataRepository

__all__ = ("DeferredMetadataRepository",)


class DeferredMetadataRepository(MetadataRepository):
    """Forwards everything to ``default`` until :meth:`bind` names another store.

    :param default: where values go until (and unless) the store is bound.
    :param owner: named in errors (e.g. ``"task A's done repository"``).
    """

    def __init__(self, default: MetadataRepository, *, owner: str) -> None:
        self._target = default
        self._default = default
        self._owner = owner
        self._written = False

    @property
    def target(self) -> MetadataRepository:
        """The repository the values are stored in now."""
        return self._target

    @property
    def is_bound(self) -> bool:
        """Whether :meth:`bind` chose a store other than the default."""
        return self._target is not self._default

    def bind(self, store: MetadataRepository) -> None:
        """Store values in ``store`` from now on: once, and only while nothing was written
        to the default (those values would be lost).

        Binding again to a store with the same description (the same directory, say) keeps
        the first; anything else is a :class:`~pydatatask.errors.ConfigurationError` naming the owner.
        """
        if store is self._target:
            return
        if self.is_bound:
            if store.describe() == self._target.describe():
                return
            raise ConfigurationError(
                f"{self._owner} is already stored in {self._target.describe()}; "
                f"it cannot move to {store.describe()}"
            )
        if self._written:
            raise ConfigurationError(
                f"{self._owner} was written to in memory before its store was chosen; "
                "build the pipeline before running jobs, or give the task the repository itself"
            )
        self._target = store

    def describe(self) -> str:
        return self._target.describe()

    @property
    def is_writable(self) -> bool:
        return self._target.is_writable

    async def validate(self, create: bool = False) -> None:
        await self._target.validate(create)

    async def keys(self) -> set[str]:
        return await self._target.keys()

    async def _list(self) -> Iterable[str]:
        return await self._target.keys()

    async def _list_versions(self) -> dict[str, str | None]:
        return await self._target.versions()

    async def _contains(self, key: str) -> bool:
        return await self._target.contains(key)

    async def _delete(self, key: str) -> None:
        await self._target.delete(key)

    async def _get(self, key: str) -> Any:
        return await self._target.get(key)

    def _writing(self) -> MetadataRepository:
        if self._target is self._default:
            self._written = True
        return self._target

    async def _put(self, key: str, value: Any) -> None:
        await self._writing().put(key, value)

    async def _create(self, key: str, value: Any) -> bool:
        return await self._writing().create(key, value)

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        return await self._writing().replace_if(key, expected, value)

    # the bulk calls of a batch go to the store's own (one directory sync, one request)
    async def _put_many(self, values: dict[str, Any]) -> None:
        await self._writing().put_many(values)

    async def _create_many(self, values: dict[str, Any]) -> set[str]:
        return await self._writing().create_many(values)

    async def _replace_many_if(self, changes: dict[str, tuple[Any, Any]]) -> set[str]:
        return await self._writing().replace_many_if(changes)

    async def _delete_many(self, keys: list[str]) -> None:
        await self._target.delete_many(keys)

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        # the backend's hook itself: corrupt values come back as errors, for the caller
        return await self._target._get_many(keys)

    def _location(self, key: str) -> str:
        return self._target._location(key)
