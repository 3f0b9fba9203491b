"""The storage SCP: C-ECHO, and C-STORE of CR/DX/SC images straight into the spool.

An instance is acknowledged (status 0x0000) only after its bytes are durably in ``pending/``;
when the spool cannot take it (disk short of ``min_free_mb``, a write error) the answer is
0xA700 "Out of resources", and the sender keeps it and retries. Nothing is decoded here: the
encoded data set is written as received, so a C-STORE costs a disk write, not a decode.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import TYPE_CHECKING

from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)

from ..ingest import DECODED_TRANSFER_SYNTAXES
from .telemetry import Metrics, event

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

    from .config import NodeConfig, TlsConfig
    from .spool import Spool

__all__ = ["RECEIVED_SOP_CLASSES", "RECEIVED_TRANSFER_SYNTAXES", "start_scp"]

log = logging.getLogger("anaxreport.node")

#: What the node takes: the image storage classes of chest radiographs (DESIGN.md §7).
RECEIVED_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
#: Every transfer syntax ingest decodes (and no other: the worker could not read it).
RECEIVED_TRANSFER_SYNTAXES = DECODED_TRANSFER_SYNTAXES
#: C-STORE statuses (PS3.4 B.2.3).
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """Our certificate; with a CA, peers must present a certificate it signed (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    if tls.ca_certificates is not None:
        context.load_verify_locations(cafile=str(tls.ca_certificates))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_scp(
    config: NodeConfig, spool: Spool, metrics: Metrics, received: threading.Event
) -> ThreadedAssociationServer:
    """Listen on ``config.host``/``config.port`` in background threads; returns the server
    (its ``server_address`` has the bound port when port 0 was asked for)."""
    ae = AE(ae_title=config.ae_title)
    ae.require_calling_aet = list(config.allowed_calling_aes)  # empty: any calling AE
    ae.require_called_aet = config.check_called_ae
    ae.maximum_associations = 16
    ae.add_supported_context(Verification)
    for sop_class in RECEIVED_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(RECEIVED_TRANSFER_SYNTAXES))

    def on_store(store: evt.Event) -> int:
        uid = str(store.request.AffectedSOPInstanceUID)
        calling = store.assoc.requestor.ae_title
        if spool.free_mb() < config.min_free_mb:
            metrics.count("store_refused")
            event(
                log,
                logging.ERROR,
                "spool-full",
                calling_ae=calling,
                sop_instance_uid=uid,
                reason=f"less than {config.min_free_mb} MB free",
            )
            return OUT_OF_RESOURCES
        try:
            item = spool.accept(store.encoded_dataset(), uid)
        except OSError as exc:
            metrics.count("store_refused")
            event(
                log,
                logging.ERROR,
                "spool-write-failed",
                calling_ae=calling,
                sop_instance_uid=uid,
                error=str(exc),
            )
            return OUT_OF_RESOURCES
        metrics.count("received")
        event(
            log,
            logging.INFO,
            "received",
            calling_ae=calling,
            sop_instance_uid=uid,
            sop_class_uid=str(store.request.AffectedSOPClassUID),
            path=item.path.name,
        )
        received.set()
        return SUCCESS

    def on_echo(echo: evt.Event) -> int:
        event(log, logging.INFO, "echo", calling_ae=echo.assoc.requestor.ae_title)
        return SUCCESS

    def on_rejected(rejected: evt.Event) -> None:
        requestor = rejected.assoc.requestor
        called = rejected.assoc.requestor.primitive.called_ae_title  # as the request called it
        if config.allowed_calling_aes and requestor.ae_title not in config.allowed_calling_aes:
            reason = "calling AE title not allowed"
        elif config.check_called_ae and called != config.ae_title:
            reason = f"called AE title is not {config.ae_title}"
        else:
            reason = "rejected"
        metrics.count("associations_rejected")
        event(
            log,
            logging.WARNING,
            "association-rejected",
            calling_ae=requestor.ae_title,
            called_ae=called,
            address=f"{requestor.address}:{requestor.port}",
            reason=reason,
        )

    def on_accepted(accepted: evt.Event) -> None:
        requestor = accepted.assoc.requestor
        event(
            log,
            logging.INFO,
            "association-accepted",
            calling_ae=requestor.ae_title,
            address=f"{requestor.address}:{requestor.port}",
        )

    handlers = [
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_REJECTED, on_rejected),
        (evt.EVT_ACCEPTED, on_accepted),
    ]
    context = None if config.tls is None else server_ssl_context(config.tls)
    server = ae.start_server(
        (config.host, config.port), block=False, evt_handlers=handlers, ssl_context=context
    )
    assert server is not None  # block=False always returns the server
    return server
