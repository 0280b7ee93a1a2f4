"""One writer task in a forked process beside this one, its result collected later.

Building DICOM objects is mostly Python (pydicom, highdicom), so a second *thread*
gains nothing: it waits on the interpreter lock, and slows the first thread while it
waits. A forked child shares the result's arrays copy-on-write (nothing is pickled
or copied but the task's small return value) and runs on the other core: on the demo
CT the heatmap objects (Secondary Capture slices, Parametric Map, NIfTI) are written
while this process writes the SEG, the mask and the SR.

The child only runs the task and writes files into the caller's staging folder; its
return value (paths and notes) or its error comes back through a pipe. It never runs
the parent's cleanup (``os._exit``), and it dies with the parent (``PR_SET_PDEATHSIG``),
so a killed service leaves no writer behind. Where ``fork`` is unavailable, or with
``MEDLENS_WRITE_FORK=0``, the task runs in this process when its result is asked for:
the same files either way.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from medlens.errors import MedLensError, OutputError

__all__ = ["Beside", "beside_process", "fork_enabled"]

_T = TypeVar("_T")

#: Longest a writer child may take before it is killed and the set fails (a hung child
#: must not hang a service).
TIMEOUT_S = 900.0


def fork_enabled() -> bool:
    """Whether writer tasks run in a forked process (Linux, unless ``MEDLENS_WRITE_FORK=0``)."""
    return sys.platform == "linux" and os.environ.get("MEDLENS_WRITE_FORK", "1") != "0"


class Beside(Generic[_T]):
    """A task started by :func:`beside_process`; :meth:`result` waits for its value."""

    def __init__(self, task: Callable[[], _T], pid: int | None, fd: int | None) -> None:
        self._task = task
        self._pid = pid
        self._fd = fd

    @property
    def forked(self) -> bool:
        """Whether the task runs in a child process."""
        return self._pid is not None

    def result(self, timeout_s: float = TIMEOUT_S) -> _T:
        """The task's return value.

        Raises:
            MedLensError: The task's own typed error (an ``OutputError`` for any other).
            OutputError: If the child died, or ran past ``timeout_s`` and was killed.
        """
        if self._pid is None or self._fd is None:
            return self._task()
        pid, fd = self._pid, self._fd
        self._pid = self._fd = None
        try:
            payload = _read_all(fd, pid, timeout_s)
        finally:
            os.close(fd)
            _, status = os.waitpid(pid, 0)
        if not payload:
            why = (
                f"killed by signal {os.WTERMSIG(status)}"
                if os.WIFSIGNALED(status)
                else f"exit status {os.waitstatus_to_exitcode(status)}"
            )
            raise OutputError(f"the writer process ended without a result ({why})")
        ok, value = pickle.loads(payload)
        if ok:
            return value  # type: ignore[no-any-return]
        raise value if isinstance(value, MedLensError) else OutputError(str(value))

    def cancel(self) -> None:
        """Stop a forked task whose result is no longer wanted (the set failed)."""
        if self._pid is None or self._fd is None:
            return
        pid, fd = self._pid, self._fd
        self._pid = self._fd = None
        os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def beside_process(task: Callable[[], _T]) -> Beside[_T]:
    """Start ``task`` in a forked child (or defer it, see the module docstring).

    Call it before starting any thread of this write: a thread running at fork time
    could hold a lock the child then needs.
    """
    if not fork_enabled():
        return Beside(task, None, None)
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return Beside(task, None, None)
    if pid == 0:  # the child: run, report, leave without the parent's cleanup
        os.close(read_fd)
        code = 0
        try:
            # The child is short-lived: a collection would only touch (and so copy) the
            # pages of objects it shares with the parent.
            gc.disable()
            _die_with_parent()
            _quiet()
            try:
                payload = pickle.dumps((True, task()))
            except BaseException as e:  # every failure goes back as one typed error
                payload = pickle.dumps((False, _portable(e)))
            _write_all(write_fd, payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    return Beside(task, pid, read_fd)


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling (typed errors do), else an ``OutputError`` of its text."""
    one_line = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, MedLensError):
        try:
            pickle.loads(pickle.dumps(e))
            return e
        except Exception:  # an error class with a custom signature
            pass
    return OutputError(f"writer process failed: {type(e).__name__}: {one_line}"[:500])


def _die_with_parent() -> None:
    # A killed service must not leave a writer behind (Linux: PR_SET_PDEATHSIG).
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def _quiet() -> None:
    # A lock another thread held at fork time (a stream's, a handler's) stays held in the
    # child: the child writes no log lines or warnings, and has its own standard streams.
    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    sys.stdout = sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)


def _read_all(fd: int, pid: int, timeout_s: float) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0.0))
        if not ready:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise OutputError(f"the writer process ran past {timeout_s:.0f} s and was stopped")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
