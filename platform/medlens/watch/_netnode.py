"""DICOM network node: a C-STORE SCP feeding ingest, and a C-STORE SCU sending results.

Received instances are written to ``STATE/spool/`` (temporary name, fsync, rename)
*before* the SCP answers Success, so an acknowledged instance survives a crash. They are
received in chunks to a temporary file (pynetdicom's ``STORE_RECV_CHUNKED_DATASET``), never
held whole in memory: eight concurrent 2 GB instances would otherwise need about 30 GB. One
over ``max_file_bytes`` is refused (Out of resources) before it reaches the spool, and
its temporary file stops growing at the limit (the rest is discarded as it arrives). The
ingest loop then treats spool files like watched files (already complete, no settling).
Spooled files go through the same checks as folder input (UID grammar included), so the
network is no shortcut around them.

The node is hardened (:class:`~medlens.watch._config.NodeSettings`): the called AE
title must be ours and the calling AE title on the allowlist; optional TLS (with
client certificates when a CA is given); ACSE, DIMSE and network idle timeouts; a PDU
size limit; and a maximum of concurrent associations that counts only peers that have
actually asked for an association, so silent TCP connections (dropped after the ACSE
timeout) cannot lock real senders out.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medlens.errors import ConfigError, OutputError
from medlens.imaging.regular import MAX_FILE_BYTES
from medlens.watch._config import NodeSettings, PacsTarget
from medlens.watch._ingest import move_atomic

__all__ = ["StoreSCP", "client_tls_context", "decodable_transfer_syntaxes", "send_files"]

_log = logging.getLogger("medlens.watch")


class StoreSCP:
    """A Storage SCP writing what it receives into ``spool``.

    Args:
        spool: Folder received files are written to.
        ae_title: Our AE title.
        host: Listen address.
        port: Listen port (0: any free port; see :attr:`port` after :meth:`start`).
        on_file: Called with each written path (to wake the ingest loop).
        on_closed: Called when an association that stored instances ends, with the
            Series Instance UIDs it stored and whether it ended cut off (aborted, or the
            Connection closed without a release): its series may be incomplete.
        max_file_bytes: Largest instance accepted (as the ingest's ``max_file_bytes``).
        incoming: Folder instances are received into (pynetdicom's temporary files),
            instead of the system's temporary folder: the transfers an abort or a kill
            cut off leave their partial files there, and :meth:`start` and each
            association's end remove them. Process-wide while the node listens (one node
            per process).
    """

    def __init__(
        self,
        spool: Path,
        *,
        ae_title: str,
        host: str,
        port: int,
        on_file: Callable[[Path], None] | None = None,
        node: NodeSettings | None = None,
        on_closed: Callable[[set[str], bool], None] | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        incoming: Path | None = None,
    ) -> None:
        self.node = node or NodeSettings()
        self.max_file_bytes = max_file_bytes
        self.incoming = incoming
        self._tempfile: Any = None  # pynetdicom's NamedTemporaryFile while redirected
        self._over: set[str] = set()  # received files cut off at max_file_bytes (names)
        self.spool = spool
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.on_file = on_file
        self._server: Any = None
        self.received = 0
        self.rejected = 0
        self.on_closed = on_closed
        # Per association (by id): the series it stored, and whether it was released.
        self._series: dict[int, set[str]] = {}
        self._released: set[int] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start listening (in pynetdicom's threads).

        Raises:
            ConfigError: If the port cannot be bound.
        """
        from pynetdicom import AllStoragePresentationContexts, _config, evt

        # Process-wide, and harmless to MedLens's other pynetdicom use (it only sends).
        _config.STORE_RECV_CHUNKED_DATASET = True
        self._redirect_temporary_files(self.incoming)
        node = self.node
        self.spool.mkdir(parents=True, exist_ok=True)
        ae = _NodeAE(ae_title=self.ae_title)
        # Every storage SOP class in every transfer syntax MedLens can decode here: a PACS
        # forwarding stored JPEG 2000 or JPEG-LS images cannot transcode them, and pynetdicom's
        # default (uncompressed only) would refuse the association's contexts.
        syntaxes = decodable_transfer_syntaxes()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification (C-ECHO)
        ae.maximum_pdu_size = node.max_pdu_bytes
        ae.maximum_associations = node.max_associations
        ae.acse_timeout = node.acse_timeout_seconds
        ae.dimse_timeout = node.dimse_timeout_seconds
        ae.network_timeout = node.network_timeout_seconds
        ae.require_called_aet = node.require_called_aet
        if node.allowed_calling_aets:
            ae.require_calling_aet = list(node.allowed_calling_aets)
        else:
            _log.warning("the DICOM node accepts any calling AE title (no allowlist set)")
        try:
            self._server = ae.start_server(
                (self.host, self.port),
                block=False,
                evt_handlers=[
                    (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_RELEASED, self._on_released),
                    (evt.EVT_CONN_CLOSE, self._on_conn_close),
                ],
                ssl_context=_tls_context(node),
            )
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {e.strerror}") from e
        self.port = int(self._server.server_address[1])

    def _on_store(self, event: Any) -> int:
        try:
            received = Path(event.dataset_path)
            with self._lock:
                cut = received.name in self._over
                self._over.discard(received.name)
            size = received.stat().st_size
            if cut or size > self.max_file_bytes:
                received.unlink(missing_ok=True)
                _log.warning(
                    "C-STORE refused: an instance over the %d-byte limit (%s)",
                    self.max_file_bytes,
                    "cut off as it arrived" if cut else f"{size} bytes",
                )
                return 0xA700  # Out of resources
            name = f"{uuid.uuid4().hex}.dcm"
            move_atomic(received, self.spool / name)
        except Exception as e:  # answer the SCU with a failure status, never crash
            _log.error("C-STORE could not be stored: %s", type(e).__name__)
            return 0xA700  # Out of resources
        self.received += 1
        series = _series_uid(self.spool / name)
        if series:
            with self._lock:
                self._series.setdefault(id(event.assoc), set()).add(series)
        if self.on_file is not None:
            self.on_file(self.spool / name)
        return 0x0000

    def _redirect_temporary_files(self, incoming: Path | None) -> None:
        """Receive into ``incoming`` (else the system's temporary folder), capped in size."""
        import functools
        import tempfile

        from pynetdicom import dimse_messages

        if incoming is not None:
            incoming.mkdir(parents=True, exist_ok=True)
            self.sweep_incoming(0.0)  # nothing is being received yet: all of it is cut off
        self._tempfile = dimse_messages.NamedTemporaryFile  # type: ignore[attr-defined]
        opener = functools.partial(tempfile.NamedTemporaryFile, dir=incoming)

        def capped(*args: Any, **kwargs: Any) -> _CappedFile:
            return _CappedFile(opener(*args, **kwargs), self.max_file_bytes, self._cut_off)

        dimse_messages.NamedTemporaryFile = capped  # type: ignore[attr-defined,assignment]

    def _cut_off(self, name: str) -> None:
        with self._lock:
            self._over.add(Path(name).name)

    def sweep_incoming(self, idle_seconds: float | None = None) -> int:
        """Remove received-file fragments idle for ``idle_seconds``; how many.

        A transfer in progress writes its file with every fragment, so one unchanged for
        longer than the network timeout belongs to a transfer that was cut off.
        """
        if self.incoming is None:
            return 0
        idle = self.node.network_timeout_seconds * 2 if idle_seconds is None else idle_seconds
        now, removed = time.time(), 0
        for p in self.incoming.glob("tmp*.dcm"):
            try:
                if now - p.stat().st_mtime >= idle:
                    p.unlink()
                    removed += 1
            except OSError:  # moved into the spool meanwhile, or already gone
                continue
        if removed:
            _log.info("removed %d partial instance(s) of transfers cut off", removed)
        return removed

    def _on_released(self, event: Any) -> None:
        with self._lock:
            self._released.add(id(event.assoc))

    def in_transit(self) -> frozenset[str]:
        """Series stored by an association that is still open: more of them may come."""
        with self._lock:
            return frozenset(uid for series in self._series.values() for uid in series)

    def _on_conn_close(self, event: Any) -> None:
        key = id(event.assoc)
        with self._lock:
            series = set(self._series.get(key, set()))
            released = key in self._released
        try:
            if series and self.on_closed is not None:
                if not released:
                    _log.warning(
                        "association from %s ended without a release after storing %d "
                        "series: they are held as possibly incomplete",
                        event.assoc.requestor.address,
                        len(series),
                    )
                self.on_closed(series, not released)
        finally:
            # Only now out of transit: the service reads in_transit() before it applies
            # the ends it was told of, so a series never looks both ended and unheld.
            with self._lock:
                self._series.pop(key, None)
                self._released.discard(key)
            self.sweep_incoming()

    def _on_rejected(self, event: Any) -> None:
        self.rejected += 1
        _log.warning("association from %s refused", event.assoc.requestor.address)

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._tempfile is not None:
            from pynetdicom import dimse_messages

            dimse_messages.NamedTemporaryFile = self._tempfile  # type: ignore[attr-defined]
            self._tempfile = None


class _CappedFile:
    """pynetdicom's temporary file of one received instance, holding at most ``limit`` bytes.

    An instance over the limit was refused only once all of it lay on disk: a few
    concurrent multi-GB sends could fill the disk the state database shares. Past the
    limit the file is emptied and the rest of the transfer discarded as it arrives; the
    store handler then answers Out of resources. (Raising here instead would break
    pynetdicom's receiving thread, not just this transfer.)
    """

    def __init__(self, inner: Any, limit: int, on_over: Callable[[str], None]) -> None:
        self._inner = inner
        self._limit = limit
        self._on_over = on_over
        self._written = 0
        self.over = False
        self.name: str = inner.name
        self.file: Any = inner.file

    def write(self, data: bytes) -> int:
        if self.over:
            return len(data)
        self._written += len(data)
        if self._written > self._limit:
            self.over = True
            self._inner.seek(0)
            self._inner.truncate(0)
            self._on_over(self.name)
            return len(data)
        return int(self._inner.write(data))

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> _CappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.__exit__(*exc)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


def _series_uid(path: Path) -> str:
    """The Series Instance UID of a received instance ("" when unreadable)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return str(ds.get("SeriesInstanceUID", "") or "").strip()
    except Exception:  # ingest judges the file and says why; here it only goes untracked
        return ""


def _node_ae_class() -> Any:
    from pynetdicom import AE

    class NodeAE(AE):
        """An AE whose association limit counts only peers that sent a request."""

        @property
        def active_associations(self) -> list[Any]:
            # pynetdicom counts every accepted socket; a silent one has no request yet.
            return [
                a
                for a in super().active_associations
                if not a.is_acceptor or a.requestor.primitive is not None
            ]

    return NodeAE


def _NodeAE(ae_title: str) -> Any:  # noqa: N802 - a factory standing in for the class
    return _node_ae_class()(ae_title=ae_title)


def _tls_context(node: NodeSettings) -> ssl.SSLContext | None:
    if node.tls_cert is None or node.tls_key is None:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(node.tls_cert), str(node.tls_key))
        if node.tls_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(node.tls_ca))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS for the DICOM node: {e}") from e
    return ctx


def client_tls_context(target: PacsTarget) -> ssl.SSLContext | None:
    """The TLS context of sending to ``target`` (None without ``tls``).

    Raises:
        ConfigError: If a certificate, key or CA file cannot be loaded.
    """
    if not target.tls:
        return None
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=None if target.tls_ca is None else str(target.tls_ca),
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if target.tls_cert is not None and target.tls_key is not None:
            ctx.load_cert_chain(str(target.tls_cert), str(target.tls_key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS to {target.ae_title}: {e}") from e
    return ctx


def _reachable(target: PacsTarget, tls: ssl.SSLContext | None) -> None:
    # Probe the port first: pynetdicom drops (without closing) the socket of a refused
    # connection, and an outage means a refused connection on every try. With TLS the
    # probe shakes hands too: pynetdicom only logs why a handshake failed.
    import socket

    where = f"{target.ae_title}@{target.host}:{target.port}"
    try:
        with socket.create_connection((target.host, target.port), timeout=5) as sock:
            if tls is not None:
                name = target.tls_server_name or target.host
                with tls.wrap_socket(sock, server_hostname=name):
                    pass
    except ssl.SSLError as e:
        raise OutputError(f"{where}: TLS handshake failed: {e.reason or type(e).__name__}") from e
    except OSError as e:
        raise OutputError(f"{where} unreachable: {e.strerror or type(e).__name__}") from e


def decodable_transfer_syntaxes() -> list[str]:
    """The uncompressed transfer syntaxes and the compressed ones pydicom can decode here."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )
    from pynetdicom import ALL_TRANSFER_SYNTAXES

    out: list[str] = [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    ]
    for uid in map(str, ALL_TRANSFER_SYNTAXES):
        if uid in out:
            continue
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except NotImplementedError:  # no decoder at all for this syntax
            continue
    return out


def send_files(files: Iterable[Path], target: PacsTarget, *, ae_title: str) -> int:
    """C-STORE ``files`` to ``target`` over one association; returns how many were stored.

    One presentation context per (SOP class, transfer syntax), however many files share it
    (an association has at most 128). A compressed instance (the heatmap Secondary
    Captures are JPEG baseline) also offers its SOP class uncompressed, and is sent
    decompressed when the peer accepts only that.

    Raises:
        OutputError: If the association fails or any instance is refused.
    """
    import pydicom
    from pydicom.uid import UID, ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

    datasets = [pydicom.dcmread(p) for p in files]
    if not datasets:
        return 0
    tls = client_tls_context(target)
    _reachable(target, tls)
    ae = AE(ae_title=ae_title)
    # A PACS that is down or silent must not hold the service's loop for long.
    ae.acse_timeout = 10
    ae.dimse_timeout = 60
    ae.network_timeout = 30
    ae.connection_timeout = 5
    forms = [(str(ds.SOPClassUID), UID(str(ds.file_meta.TransferSyntaxUID))) for ds in datasets]
    pairs = sorted(
        {(sop, ts) for sop, ts in forms}
        | {(sop, ExplicitVRLittleEndian) for sop, ts in forms if ts.is_compressed}
    )
    if len(pairs) > 128:
        raise OutputError(
            f"{len(pairs)} SOP class/transfer syntax pairs to send; one association takes 128"
        )
    for sop, syntax in pairs:
        ae.add_requested_context(sop, [syntax])
    tls_args = None if tls is None else (tls, target.tls_server_name or target.host)
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        # pynetdicom leaves a refused requestor's socket open: one per retry would leak.
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            sock.close()
        raise OutputError(f"no association with {target.ae_title}@{target.host}:{target.port}")
    try:
        accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
        for ds, (sop, ts) in zip(datasets, forms, strict=True):
            if (sop, ts) not in accepted:
                if not (ts.is_compressed and (sop, ExplicitVRLittleEndian) in accepted):
                    raise OutputError(
                        f"{target.ae_title} accepts no context for {ds.SOPClassUID.name} "
                        f"in {ts.name}"
                    )
                try:
                    ds.decompress()  # the peer takes this SOP class uncompressed only
                except Exception as e:  # a decoder's own error types: one line, typed
                    raise OutputError(
                        f"cannot decompress {ds.SOPClassUID.name} for {target.ae_title}, "
                        f"which accepts it uncompressed only: {e}"
                    ) from e
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            # Success and every warning status (0x0001, 0x0107, 0x0116, 0xB0xx: PS3.7
            # Annex C) mean the instance was stored; treated as refusals, a PACS that
            # answers a warning got the same result again and again.
            if code is None or code_to_category(int(code)) not in (
                STATUS_SUCCESS,
                STATUS_WARNING,
            ):
                raise OutputError(
                    f"{target.ae_title} refused {ds.SOPClassUID.name} "
                    f"(status {'none' if code is None else hex(code)})"
                )
    finally:
        assoc.release()
    return len(datasets)
