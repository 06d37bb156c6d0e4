"""Progress reporting of the conversion stages, kept apart from how it is shown.

The pipeline calls ``progress.stage(name, total)`` and ``advance()`` on what it returns;
the CLI plugs in rich progress bars, the Python API defaults to ``NullProgress``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol

__all__ = ["Progress", "Stage", "NullProgress"]


class Stage(Protocol):
    def advance(self, n: int = 1) -> None: ...


class Progress(Protocol):
    def stage(self, name: str, total: int | None = None): ...  # a context manager yielding a Stage
    def note(self, message: str) -> None: ...


class _NullStage:
    def advance(self, n: int = 1) -> None:
        pass


class NullProgress:
    """Shows nothing."""

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Stage]:
        yield _NullStage()

    def note(self, message: str) -> None:
        pass
