"""DICOM network node: a C-STORE SCP feeding ingest, and a C-STORE SCU sending results.

Received instances are written to ``STATE/spool/`` (temporary name, fsync, rename)
*before* the SCP answers Success, so an acknowledged instance survives a crash; the
ingest loop then treats spool files like watched files (already complete, no settling).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medlens.errors import ConfigError, OutputError
from medlens.watch._config import PacsTarget
from medlens.watch._ingest import write_atomic

__all__ = ["StoreSCP", "send_files"]

_log = logging.getLogger("medlens.watch")


class StoreSCP:
    """A Storage SCP writing what it receives into ``spool``.

    Args:
        spool: Folder received files are written to.
        ae_title: Our AE title.
        host: Listen address.
        port: Listen port (0: any free port; see :attr:`port` after :meth:`start`).
        on_file: Called with each written path (to wake the ingest loop).
    """

    def __init__(
        self,
        spool: Path,
        *,
        ae_title: str,
        host: str,
        port: int,
        on_file: Callable[[Path], None] | None = None,
    ) -> None:
        self.spool = spool
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.on_file = on_file
        self._server: Any = None
        self.received = 0

    def start(self) -> None:
        """Start listening (in pynetdicom's threads).

        Raises:
            ConfigError: If the port cannot be bound.
        """
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.spool.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification (C-ECHO)
        ae.maximum_pdu_size = 0
        try:
            self._server = ae.start_server(
                (self.host, self.port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            )
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {e.strerror}") from e
        self.port = int(self._server.server_address[1])

    def _on_store(self, event: Any) -> int:
        try:
            data = event.encoded_dataset(include_meta=True)
            name = f"{uuid.uuid4().hex}.dcm"
            write_atomic(self.spool / name, data)
        except Exception as e:  # answer the SCU with a failure status, never crash
            _log.error("C-STORE could not be stored: %s", type(e).__name__)
            return 0xA700  # Out of resources
        self.received += 1
        if self.on_file is not None:
            self.on_file(self.spool / name)
        return 0x0000

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def send_files(files: Iterable[Path], target: PacsTarget, *, ae_title: str) -> int:
    """C-STORE ``files`` to ``target`` over one association; returns how many were stored.

    Raises:
        OutputError: If the association fails or any instance is refused.
    """
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in files]
    if not datasets:
        return 0
    ae = AE(ae_title=ae_title)
    for ds in datasets:
        ts = ds.file_meta.TransferSyntaxUID
        ae.add_requested_context(ds.SOPClassUID, [ts])
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        raise OutputError(f"no association with {target.ae_title}@{target.host}:{target.port}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None or code not in (0x0000, 0xB000, 0xB006, 0xB007):
                raise OutputError(
                    f"{target.ae_title} refused {ds.SOPClassUID.name} "
                    f"(status {'none' if code is None else hex(code)})"
                )
    finally:
        assoc.release()
    return len(datasets)
