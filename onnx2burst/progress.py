"""Progress reporting, kept apart from how it is shown.

Every long stage (calibration, threshold fit, bias calibration, sensitivity tables, the
guard, evaluation) calls ``progress.stage(name, total)`` and ``advance(n)`` on what it
returns; ``note(message)`` reports something the user should know. The CLI plugs in rich
bars (``cli.options.RichProgress``); the Python API defaults to :class:`NullProgress`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol

__all__ = ["Progress", "Stage", "NullProgress", "progress_or_null"]


class Stage(Protocol):
    def advance(self, n: float = 1, description: str | None = None) -> None:
        """``n`` more units done; ``description`` renames the stage from here on."""


class Progress(Protocol):
    def stage(self, name: str, total: float | None = None):
        """A context manager yielding a :class:`Stage` of ``total`` units."""

    def note(self, message: str) -> None:
        """A message for the user (shown once, not an error)."""


class _NullStage:
    def advance(self, n: float = 1, description: str | None = None) -> None:
        pass


class NullProgress:
    """Shows nothing."""

    @contextmanager
    def stage(self, name: str, total: float | None = None) -> Iterator[Stage]:
        yield _NullStage()

    def note(self, message: str) -> None:
        pass


def progress_or_null(progress: Progress | None) -> Progress:
    """``progress``, or a :class:`NullProgress` for None."""
    return NullProgress() if progress is None else progress
