"""A progress bar that costs nothing when off: ``with progress_bar(...) as advance: advance(n)``."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, enabled: bool = True,
                 transient: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, description=None)``; a rich bar on stderr when ``enabled``."""
    if not enabled:
        yield lambda n=1, description=None: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=transient) as p:
        task = p.add_task(description, total=total)

        def advance(n: float = 1, description: str | None = None) -> None:
            if description is not None:
                p.update(task, description=description)
            p.advance(task, n)

        yield advance
