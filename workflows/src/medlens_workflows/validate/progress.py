"""A rich progress bar over the cases of a validation (only on a terminal)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["case_progress"]


@contextlib.contextmanager
def case_progress(total: int, done: int, *, enabled: bool) -> Iterator[Callable[[str, bool], None]]:
    """Yield ``on_case(case_id, ok)``; draws a bar with failures counted when on a terminal."""
    console = Console(stderr=True)
    failed = 0
    if not enabled or not console.is_terminal:
        yield lambda _cid, _ok: None
        return
    columns = (
        TextColumn("validating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("cases", total=total, completed=done, failed=0)

        def on_case(_case_id: str, ok: bool) -> None:
            nonlocal failed
            failed += 0 if ok else 1
            bar.update(task, advance=1, failed=failed)

        yield on_case
