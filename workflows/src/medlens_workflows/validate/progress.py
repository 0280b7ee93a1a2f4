"""Progress of a validation on stderr: a rich bar on a terminal, else one line per case.

A validation of real CT runs for tens of minutes; a log file (``nohup … 2> log``) gets
one counter line per finished case, so progress is visible there too.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["case_progress"]


@contextlib.contextmanager
def case_progress(
    total: int, done: int, failed: int, *, enabled: bool
) -> Iterator[Callable[[str, bool], None]]:
    """Yield ``on_case(case_id, ok)``, counting cases (and failures) from ``done``/``failed``."""
    console = Console(stderr=True)
    if not enabled:
        yield lambda _cid, _ok: None
        return
    if not console.is_terminal:
        t0 = time.monotonic()
        count = done

        def line(_case_id: str, ok: bool) -> None:
            # No case id: a researcher's ids may identify patients; logs must not.
            nonlocal count, failed
            count += 1
            failed += 0 if ok else 1
            print(
                f"validating {count}/{total} ({failed} failed), last case "
                f"{'scored' if ok else 'FAILED'}, {time.monotonic() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )

        yield line
        return
    columns = (
        TextColumn("validating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("cases", total=total, completed=done, failed=failed)

        def on_case(_case_id: str, ok: bool) -> None:
            nonlocal failed
            failed += 0 if ok else 1
            bar.update(task, advance=1, failed=failed)

        yield on_case
