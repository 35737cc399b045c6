"""Errors out of ``asyncio.TaskGroup``: the error itself, never the exception group."""

from __future__ import annotations

import asyncio

__all__ = ("first_error",)


def first_error(exc: BaseException) -> BaseException:
    """The exception to raise in place of ``exc``: ``exc`` itself, or for an exception
    group (as ``asyncio.TaskGroup`` raises) its first error that is not a cancellation,
    looking into nested groups.

    Callers re-raise it with its own cause (``error = first_error(group)``, then ``raise
    error from error.__cause__``); the group stays reachable as its context.
    """
    while isinstance(exc, BaseExceptionGroup):
        errors = exc.exceptions
        real = [e for e in errors if not isinstance(e, asyncio.CancelledError)]
        exc = (real or list(errors))[0]
    return exc
