"""The node: the SCP, the worker and one sender per destination around one spool.

Start-up order: recovery first (half-written files go, pending inputs and queued results
stay), then the listeners, so that a port already taken fails the start before any thread
runs, then the worker and senders (what arrives meanwhile waits in the spool). Shutdown
(SIGTERM, SIGINT) stops listening first and lets the input in hand finish; whatever is left
waits in the spool for the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .deliver import Sender, make_sender
from .receive import start_scp
from .spool import Spool
from .telemetry import Metrics, MetricsServer, event
from .worker import Worker

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

    from ..reporter import Reporter
    from .config import NodeConfig

__all__ = ["Node"]

log = logging.getLogger("anaxreport.node")


class Node:
    """``anaxreport serve`` as an object: ``start()``, ``stop()``, or ``serve_forever()``."""

    def __init__(self, config: NodeConfig, reporter: Reporter) -> None:
        self.config = config
        self.reporter = reporter
        self.spool = Spool(config.spool, tuple(d.name for d in config.destinations))
        self.metrics = Metrics()
        self._stop = threading.Event()
        self.senders: list[Sender] = [
            make_sender(d, config, self.spool, self.metrics, self._stop)
            for d in config.destinations
        ]
        self.worker = Worker(
            reporter,
            config,
            self.spool,
            self.metrics,
            self._stop,
            [s.wakeup for s in self.senders],
        )
        self.server: ThreadedAssociationServer | None = None
        self.metrics_server: MetricsServer | None = None
        self._stats = threading.Thread(target=self._log_stats, name="anaxreport-stats", daemon=True)

    @property
    def port(self) -> int:
        """The DICOM port listened on (the bound one when the configuration said 0)."""
        return self.server.server_address[1] if self.server else self.config.port

    def snapshot(self) -> dict[str, Any]:
        """Counters, latencies and queue depths: what /health and the stats line show."""
        return self.metrics.snapshot(
            {
                "status": "stopping" if self._stop.is_set() else "ok",
                "queue_depth": self.spool.depth(),
                "outbox_depth": {s.name: self.spool.outbox_depth(s.name) for s in self.senders},
            }
        )

    def start(self) -> None:
        """Recover the spool, listen, start the worker and senders.

        Raises :class:`~anaxreport.errors.ConfigurationError` when a port cannot be bound."""
        removed = self.spool.recover()
        event(
            log, logging.INFO, "starting", ae_title=self.config.ae_title,
            path=str(self.spool.root), removed=removed, count=self.spool.depth(),
            version=self.reporter.provenance.model_version,
        )  # fmt: skip
        metrics = self.config.metrics
        try:
            self.server = start_scp(self.config, self.spool, self.metrics, self.worker.wakeup)
            if metrics.port:
                self.metrics_server = MetricsServer(metrics.host, metrics.port, self.snapshot)
        except OSError as exc:
            if self.server is not None:
                self.server.shutdown()
            raise ConfigurationError(
                f"cannot listen on {self.config.host} port {self.config.port} or metrics port "
                f"{metrics.port}: {exc.strerror or exc}"
            ) from None
        for thread in self.worker.threads:
            thread.start()
        for sender in self.senders:
            sender.thread.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        if metrics.log_interval_s:
            self._stats.start()
        event(
            log, logging.INFO, "listening", ae_title=self.config.ae_title, port=self.port,
            address=self.config.host, status="tls" if self.config.tls else "plain",
        )  # fmt: skip

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, let the input in hand finish, stop the senders."""
        if self.server is not None:
            self.server.shutdown()
        self._stop.set()
        self.worker.wakeup.set()
        for thread in [*self.worker.threads, *(s.thread for s in self.senders)]:
            if thread.is_alive():
                thread.join(timeout)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        event(log, logging.INFO, "stopped", stats=self.snapshot())

    def serve_forever(self) -> None:
        """Start, wait for SIGTERM or SIGINT, stop."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    def _log_stats(self) -> None:
        while not self._stop.wait(self.config.metrics.log_interval_s):
            event(log, logging.INFO, "stats", stats=self.snapshot())
