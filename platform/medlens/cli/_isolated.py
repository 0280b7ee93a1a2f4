"""``medlens run --case-timeout/--case-memory-mb``: each case in a supervised worker process.

In-process, one case that hangs (a plugin in an endless loop, a decoder stuck on a
hostile file) stops the whole batch, and one that exhausts memory kills it. Here each
case runs in the jobs layer's worker process (:class:`~medlens.jobs.LocalExecutor`),
which keeps its host and models between cases: a case past its deadline or over the
memory ceiling is killed, reported ``failed`` with the reason, anything it left half
written is removed (its earlier result set restored), and the batch goes on with a
fresh worker.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medlens.cli.run import CaseOutcome
    from medlens.host import Host
    from medlens.imaging.series import TiltPolicy
    from medlens.jobs import JobSpec
    from medlens.routing import Case, Study

__all__ = ["IsolatedCases", "run_unit"]

_TASK = "medlens.cli._isolated:run_unit"


def _physical_mb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    except (ValueError, OSError, AttributeError):
        return 1 << 30


class IsolatedCases:
    """Runs the cases of one ``medlens run`` in a worker process, one at a time.

    Args:
        host: The command's host (its configuration and plugin overrides go to the worker).
        out: The output folder.
        run_kwargs: ``Host.run`` keywords of the command.
        on_tilt: Gantry-tilt policy.
        timeout_s: A case's deadline (seconds), None for none.
        memory_mb: The worker's memory ceiling (MiB), None for the machine's memory.
    """

    def __init__(
        self,
        host: Host,
        out: Path,
        run_kwargs: dict[str, Any],
        on_tilt: TiltPolicy,
        *,
        timeout_s: float | None,
        memory_mb: int | None,
    ) -> None:
        from medlens.jobs import LocalExecutor, PluginSource

        eps = host.entry_points
        pairs = None if eps is None else tuple((ep.name, ep.value) for ep in eps)
        # Not a service: as in-process, the validation gate follows the configuration.
        source = PluginSource(entry_points=pairs, service=False, config=host.config)
        self._executor = LocalExecutor(source, workers=1)
        self._out = out
        self._run_kwargs = run_kwargs
        self._on_tilt = on_tilt
        self._timeout_s = timeout_s
        self._memory_mb = memory_mb if memory_mb is not None else _physical_mb()
        self._next_id = 0

    def __enter__(self) -> IsolatedCases:
        self._executor.prewarm()  # imports (torch) overlap with finding the cases
        return self

    def __exit__(self, *exc: object) -> None:
        self._executor.close()

    def run(self, plugin_id: str, unit: Case | Study) -> CaseOutcome:
        """Run one case or study; a killed or dead worker gives a ``failed`` outcome."""
        from medlens.cli._studies import study_input
        from medlens.cli.run import CaseOutcome, pending_outcome, recover_case_dir
        from medlens.jobs import JobSpec
        from medlens.routing import Study

        self._next_id += 1
        spec = JobSpec(
            self._next_id,
            plugin_id,
            study_input(unit) if isinstance(unit, Study) else str(unit.path),
            str(self._out),
            task=_TASK,
            payload=(unit, self._run_kwargs, self._on_tilt),
        )
        timeout = self._timeout_s if self._timeout_s is not None else float("inf")
        self._executor.submit(spec, timeout_s=timeout, memory_mb=self._memory_mb)
        while True:
            done = self._executor.poll(wait_s=0.5)
            if done:
                break
        outcome = done[0].outcome
        if outcome.ok:
            return CaseOutcome(**outcome.summary["outcome"])
        error = outcome.error or "the worker failed"
        if error.startswith("timed out"):
            error += " (--case-timeout)"
        recover_case_dir(self._out, unit.name)
        stopped = f"{error}: the case was stopped, nothing half-written was left"
        return dataclasses.replace(pending_outcome(unit), error=stopped)


def run_unit(host: Host, spec: JobSpec) -> dict[str, Any]:
    """The worker's task: route, run and write one case or study (never raises for it)."""
    from medlens.cli.run import _run_unit

    unit, run_kwargs, on_tilt = spec.payload
    o = _run_unit(host, spec.plugin, unit, Path(spec.out_dir), run_kwargs, on_tilt)
    return {"outcome": dataclasses.asdict(o)}
