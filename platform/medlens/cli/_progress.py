"""Rich progress for long CLI work, shown only on a terminal (logs and JSON stay clean)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = ["progress_bar", "spinner"]


@contextlib.contextmanager
def spinner(description: str) -> Iterator[None]:
    """A transient spinner with elapsed time on stderr, if stderr is a terminal."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        progress.add_task(description, total=None)
        yield


@contextlib.contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[str, bool], None]]:
    """A bar of ``total`` steps on stderr, if stderr is a terminal.

    Yields ``step(text, done)``: shows ``text`` beside the bar and, when ``done``,
    advances it by one. Off a terminal the callable does nothing.
    """
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda text, done: None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[case]}"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total, case="")

        def step(text: str, done: bool) -> None:
            progress.update(task, advance=1 if done else 0, case=text)

        yield step
