"""Peers for the node tests: a recording storage SCP (a stand-in PACS with a chosen SOP class
list and status), a C-STORE sender, phantom studies with their own identity, and waiting."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    GrayscaleSoftcopyPresentationStateStorage,
)

from anaxreport.render.uids import derived_uid

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "samples").glob("*.dcm"))
PACS_CLASSES = (Comprehensive3DSRStorage, ComprehensiveSRStorage,
                GrayscaleSoftcopyPresentationStateStorage)  # fmt: skip


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``predicate``; a costly one (a PACS query) gets a longer ``interval``, so that the
    polling does not take the CPU the node under test needs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class RecordingPacs:
    """A storage SCP on a free loopback port that keeps what it receives.

    ``sop_classes`` are the classes it accepts (a PACS without Comprehensive 3D SR, say);
    ``status`` is what it answers to each C-STORE (0xA900 to refuse everything).
    """

    def __init__(
        self,
        ae_title: str = "PACS",
        sop_classes: Iterable[str] = PACS_CLASSES,
        status: int = 0x0000,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
    ) -> None:
        self.received: list[Dataset] = []
        self.proposed: set[str] = set()  # every abstract syntax a peer proposed
        self.calls = 0
        self.status = status
        self.ae = AE(ae_title=ae_title)
        self.ae_title = ae_title
        for uid in sop_classes:
            self.ae.add_supported_context(uid, list(syntaxes))
        self._lock = threading.Lock()
        self.server = self.ae.start_server(
            ("127.0.0.1", port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_REQUESTED, self._requested)],
            ssl_context=ssl_context,
        )
        self.port = self.server.server_address[1]

    def _requested(self, event: evt.Event) -> None:
        with self._lock:
            self.proposed |= {
                str(c.abstract_syntax) for c in event.assoc.requestor.requested_contexts
            }

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            self.calls += 1
            if self.status in (0x0000, 0xB000):
                ds = event.dataset
                ds.file_meta = event.file_meta
                ds.file_meta.TransferSyntaxUID = event.context.transfer_syntax
                self.received.append(ds)
        return self.status

    def stop(self) -> None:
        self.server.shutdown()


def store(port: int, paths: Iterable[Path], calling_ae: str = "MODALITY",
          called_ae: str = "ANAXREPORT") -> list[int]:  # fmt: skip
    """C-STORE ``paths`` over one association; the status of each (raises if none)."""
    ae = AE(ae_title=calling_ae)
    images = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation)
    contexts = [build_context(c, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for c in images]
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"association to port {port} not established")
    try:
        statuses = []
        for path in paths:
            status = assoc.send_c_store(path)
            if "Status" not in status:
                raise ConnectionError("no C-STORE response")
            statuses.append(int(status.Status))
        return statuses
    finally:
        if assoc.is_established:
            assoc.release()


def phantom_study(source: Path, target: Path, index: int, **attributes: str) -> Dataset:
    """A copy of ``source`` as patient ``index``'s own study (new patient, study, series and
    SOP identity; pixels unchanged). Returns the data set written to ``target``."""
    ds = pydicom.dcmread(source)
    key = f"anaxreport-test-{source.name}-{index}"
    ds.PatientName = f"Phantom^Patient{index:03d}"
    ds.PatientID = f"PH{index:05d}"
    ds.StudyInstanceUID = derived_uid(key, "study")
    ds.SeriesInstanceUID = derived_uid(key, "series")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = derived_uid(key, "sop")
    ds.AccessionNumber = f"A{index:05d}"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)
    return ds
