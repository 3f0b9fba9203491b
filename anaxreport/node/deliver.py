"""Delivery: one sender thread per destination empties its outbox folder, with backoff.

Two kinds of failure are kept apart (see :class:`~anaxreport.node.config.RetryPolicy`): the
destination cannot be reached (:class:`Unreachable`: retried for ever, everything waits), or it
refuses one result (counted; after ``max_attempts`` the result goes to the dead-letter folder).
A result leaves the outbox only when the destination said it stored it; "stored with warning"
(PS3.4 B.2.3, or a STOW-RS WarningReason) counts as stored.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import threading
import time
from abc import ABC, abstractmethod
from copy import deepcopy
from pathlib import Path

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association, build_context
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Comprehensive3DSRStorage, ComprehensiveSRStorage
from pynetdicom.status import code_to_category

from ..render.uids import derived_uid
from .config import (
    Destination,
    DicomDestination,
    FhirDestination,
    NodeConfig,
    StowDestination,
    TlsConfig,
)
from .spool import Spool, received_ns
from .telemetry import Metrics, event

__all__ = ["Sender", "Unreachable", "as_comprehensive_sr", "make_sender"]

log = logging.getLogger("anaxreport.node")

#: Results sent over one association or in one STOW-RS request.
BATCH = 32


class Unreachable(Exception):
    """The destination as a whole failed (network, association, HTTP 5xx): retry later."""


class Sender(ABC):
    """Empties ``spool.outbox(destination.name)`` into one destination, for ever."""

    def __init__(
        self,
        destination: Destination,
        config: NodeConfig,
        spool: Spool,
        metrics: Metrics,
        stop: threading.Event,
    ) -> None:
        self.destination = destination
        self.name = destination.name
        self.config = config
        self.policy = config.delivery
        self.spool = spool
        self.metrics = metrics
        self.stop = stop
        self.wakeup = threading.Event()
        self._refusals: dict[str, int] = {}  # outbox file name -> refusals so far
        self._refused_now = False
        self.thread = threading.Thread(target=self.run, name=f"anaxreport-send-{self.name}")

    @abstractmethod
    def deliver(self, paths: list[Path]) -> None:
        """Send ``paths``; call :meth:`delivered` or :meth:`refused` for each one sent, or
        raise :class:`Unreachable` (those not yet sent stay queued)."""

    def run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            self.wakeup.clear()
            batch = list(self.spool.queued(self.name))[:BATCH]
            if not batch:
                self.wakeup.wait(1.0)
                continue
            self._refused_now = False
            try:
                self.deliver(batch)
            except Unreachable as exc:
                failures += 1
                delay = self.policy.delay(failures, random.random())
                self.metrics.count("unreachable", self.name)
                event(
                    log,
                    logging.WARNING,
                    "destination-unreachable",
                    destination=self.name,
                    error=str(exc),
                    attempt=failures,
                    delay_s=round(delay, 2),
                )
                self.stop.wait(delay)
                continue
            except Exception as exc:  # a bug must not end delivery for good
                failures += 1
                log.exception(
                    "sender-error", extra={"fields": {"destination": self.name, "error": repr(exc)}}
                )
                self.stop.wait(self.policy.delay(failures, random.random()))
                continue
            failures = 0
            if self._refused_now:  # do not hammer a destination that refuses a result
                worst = max(self._refusals.values(), default=1)
                self.stop.wait(self.policy.delay(worst, random.random()))

    def delivered(self, path: Path, status: str = "") -> None:
        latency = time.time() - received_ns(path) / 1e9
        path.unlink(missing_ok=True)
        self._refusals.pop(path.name, None)
        self.metrics.count("delivered", self.name)
        self.metrics.observe("delivery", latency)
        event(
            log,
            logging.INFO,
            "delivered",
            destination=self.name,
            path=path.name,
            status=status or "success",
            latency_s=round(latency, 3),
        )

    def refused(self, path: Path, reason: str) -> None:
        attempts = self._refusals.get(path.name, 0) + 1
        self._refused_now = True
        self.metrics.count("refusals", self.name)
        if attempts >= self.policy.max_attempts:
            self._refusals.pop(path.name, None)
            target = self.spool.bury(self.name, path)
            self.metrics.count("dead", self.name)
            event(
                log,
                logging.ERROR,
                "dead-letter",
                destination=self.name,
                path=str(target),
                reason=reason,
                attempt=attempts,
            )
            return
        self._refusals[path.name] = attempts
        event(
            log,
            logging.WARNING,
            "refused-by-destination",
            destination=self.name,
            path=path.name,
            reason=reason,
            attempt=attempts,
        )


def client_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """Verify the server against our CA (or the system's) and present our certificate."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=None if tls.ca_certificates is None else str(tls.ca_certificates),
    )
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return context


def as_comprehensive_sr(sr: Dataset) -> Dataset:
    """The same document as a Comprehensive SR (…88.33), for a PACS without Comprehensive 3D SR.

    Our TID 1500 content uses 2D SCOORD only, which Comprehensive SR allows. It is a different
    SOP instance (new class, new UID derived from the 3D one), so both can coexist anywhere."""
    copy = deepcopy(sr)
    uid = derived_uid(str(sr.SOPInstanceUID), "comprehensive-sr")
    copy.SOPClassUID = copy.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = uid
    return copy


class DimseSender(Sender):
    """C-STORE to a PACS. Only the SOP classes in the batch are proposed (plus Comprehensive SR
    as the fallback for Comprehensive 3D SR), each with explicit and implicit little endian.

    A result goes out as the bytes the worker wrote (pynetdicom's chunked sending from file)
    when the PACS accepts its class in its transfer syntax, the usual case: decoding and
    re-encoding an SR of ~17,000 elements would cost a few hundred milliseconds of CPU that the
    model needs. Otherwise (implicit VR only, or the Comprehensive SR fallback) it is read and
    re-encoded.
    """

    destination: DicomDestination

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.ae = AE(ae_title=self.config.ae_title)
        timeout = self.policy.timeout_s
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout
        self.ae.connection_timeout = timeout
        self.tls_args = None
        if self.destination.tls and self.config.tls is not None:
            self.tls_args = (client_ssl_context(self.config.tls), self.destination.host)
        # a path given to send_c_store is streamed from the file, never decoded (documented
        # pynetdicom setting; it changes nothing for data sets given as Dataset)
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True

    def deliver(self, paths: list[Path]) -> None:
        batch = [(p, read_file_meta_info(p)) for p in paths]
        classes = list(dict.fromkeys(str(meta.MediaStorageSOPClassUID) for _, meta in batch))
        if Comprehensive3DSRStorage in classes and ComprehensiveSRStorage not in classes:
            classes.append(ComprehensiveSRStorage)
        syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        dest = self.destination
        assoc = self.ae.associate(
            dest.host,
            dest.port,
            contexts=[build_context(uid, syntaxes) for uid in classes],
            ae_title=dest.ae_title,
            tls_args=self.tls_args,
        )
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:  # it takes none of them
                for path, meta in batch:
                    self._sendable({}, path, meta)
                return
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no"
            raise Unreachable(f"{why} association with {dest.ae_title}@{dest.host}:{dest.port}")
        try:
            accepted: dict[str, set[str]] = {}
            for cx in assoc.accepted_contexts:
                accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax))
            for path, meta in batch:
                sendable = self._sendable(accepted, path, meta)
                if sendable is not None:
                    self._store(assoc, path, sendable)
        finally:
            if assoc.is_established:
                assoc.release()

    def _sendable(
        self, accepted: dict[str, set[str]], path: Path, meta: Dataset
    ) -> Path | Dataset | None:
        """What to send for ``path``: the file itself, a data set in a class and syntax the PACS
        accepted, or None (refused and counted)."""
        sop_class = str(meta.MediaStorageSOPClassUID)
        if str(meta.TransferSyntaxUID) in accepted.get(sop_class, ()):
            return path
        if sop_class in accepted:
            return pydicom.dcmread(path)  # re-encoded in the accepted syntax
        if sop_class == Comprehensive3DSRStorage and ComprehensiveSRStorage in accepted:
            fallback = as_comprehensive_sr(pydicom.dcmread(path))
            event(log, logging.INFO, "fallback-comprehensive-sr", destination=self.name,
                  path=path.name, result_uid=str(fallback.SOPInstanceUID))  # fmt: skip
            return fallback
        name = getattr(meta.MediaStorageSOPClassUID, "name", sop_class)
        self.refused(path, f"no presentation context accepted for {name}")
        return None

    def _store(self, assoc: Association, path: Path, sendable: Path | Dataset) -> None:
        status = assoc.send_c_store(sendable)
        if "Status" not in status:  # no response: aborted, or the DIMSE timeout
            raise Unreachable(f"no C-STORE response from {self.destination.ae_title}")
        code = int(status.Status)
        category = code_to_category(code)
        if category in ("Success", "Warning"):
            self.delivered(path, f"{category.lower()} 0x{code:04X}")
        else:
            self.refused(path, f"C-STORE status 0x{code:04X} ({category})")


class HttpSender(Sender):
    """Shared by STOW-RS and FHIR: a requests session with TLS and an optional bearer token."""

    destination: StowDestination | FhirDestination

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.session = requests.Session()
        tls = self.config.tls
        if tls is not None:
            self.session.cert = (str(tls.certificate), str(tls.private_key))
            if tls.ca_certificates is not None:
                self.session.verify = str(tls.ca_certificates)
        if self.destination.token_env:
            token = os.environ.get(self.destination.token_env, "")
            self.session.headers["Authorization"] = f"Bearer {token}"

    @staticmethod
    def transient(status: int) -> bool:
        """HTTP statuses worth waiting out (RFC 9110): timeout, too many requests, 5xx."""
        return status in (408, 429) or status >= 500


class StowSender(HttpSender):
    """STOW-RS (PS3.18 10.5) through dicomweb-client, one multipart request per batch."""

    destination: StowDestination

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.client = DICOMwebClient(url=self.destination.url, session=self.session)
        self.client.set_http_retry_params(retry=False)  # our own backoff, durable

    def deliver(self, paths: list[Path]) -> None:
        datasets = {p: pydicom.dcmread(p) for p in paths}
        try:
            response = self.client.store_instances(list(datasets.values()))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if self.transient(status):
                raise Unreachable(f"STOW-RS to {self.destination.url}: HTTP {status}") from exc
            for path in paths:
                self.refused(path, f"STOW-RS HTTP {status}")
            return
        except requests.RequestException as exc:
            raise Unreachable(f"STOW-RS to {self.destination.url}: {exc}") from exc
        failed = {
            str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0))
            for item in response.get("FailedSOPSequence", [])
        }
        for path, ds in datasets.items():
            uid = str(ds.SOPInstanceUID)
            if uid in failed:
                self.refused(path, f"STOW-RS failure reason 0x{failed[uid]:04X}")
            else:
                self.delivered(path, "stored")


class FhirSender(HttpSender):
    """POST of each transaction Bundle to the FHIR base URL (FHIR RESTful API, transaction)."""

    destination: FhirDestination

    def deliver(self, paths: list[Path]) -> None:
        for path in paths:
            try:
                response = self.session.post(
                    self.destination.url,
                    data=path.read_bytes(),
                    headers={
                        "Content-Type": "application/fhir+json",
                        "Accept": "application/fhir+json",
                    },
                    timeout=self.policy.timeout_s,
                )
            except requests.RequestException as exc:
                raise Unreachable(f"FHIR server {self.destination.url}: {exc}") from exc
            if response.ok:
                self.delivered(path, f"HTTP {response.status_code}")
            elif self.transient(response.status_code):
                raise Unreachable(
                    f"FHIR server {self.destination.url}: HTTP {response.status_code}"
                )
            else:
                self.refused(path, f"FHIR HTTP {response.status_code}: {response.text[:200]}")


def make_sender(
    destination: Destination,
    config: NodeConfig,
    spool: Spool,
    metrics: Metrics,
    stop: threading.Event,
) -> Sender:
    kind = {DicomDestination: DimseSender, StowDestination: StowSender, FhirDestination: FhirSender}
    return kind[type(destination)](destination, config, spool, metrics, stop)
