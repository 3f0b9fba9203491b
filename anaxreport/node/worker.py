"""The worker: pending input → Reporter → result files in each destination's outbox.

Order of effects, chosen so that a crash anywhere is harmless (see :mod:`.spool`): results
are written to every outbox first, then the input leaves ``pending/``. A refused or failed
input produces no result object, only a log line with its reason and a JSON note beside the
kept input.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import AnaxReportError, UnsupportedStudyError
from ..render import pretty
from ..render.uids import result_uid
from .spool import PendingItem, Spool
from .telemetry import Metrics, event

if TYPE_CHECKING:
    from ..ingest import Radiograph
    from ..report import RegionFindings, Report
    from ..reporter import Reporter
    from .config import NodeConfig

__all__ = ["MAX_PROCESS_ATTEMPTS", "Worker"]

log = logging.getLogger("anaxreport.node")

#: Restarts an input may survive mid-processing before it is set aside as ``worker-crash``.
MAX_PROCESS_ATTEMPTS = 3


class Worker:
    """Processes the spool's pending inputs, oldest first, in ``config.workers`` threads, up to
    ``config.batch_size`` at a time (:meth:`process`)."""

    def __init__(
        self,
        reporter: Reporter,
        config: NodeConfig,
        spool: Spool,
        metrics: Metrics,
        stop: threading.Event,
        on_posted: list[threading.Event],
    ) -> None:
        self.reporter = reporter
        self.config = config
        self.spool = spool
        self.metrics = metrics
        self.stop = stop
        self.wakeup = threading.Event()
        self.on_posted = on_posted
        self._claimed: set[str] = set()
        self._lock = threading.Lock()
        self._warm = threading.Lock()
        self._warmed = not config.warm_up
        self.threads = [
            threading.Thread(target=self.run, name=f"anaxreport-worker-{i}")
            for i in range(config.workers)
        ]
        #: the formats some destination wants, rendered once per input
        self.kinds = tuple(dict.fromkeys(k for d in config.destinations for k in d.outputs))

    def _claim(self) -> list[PendingItem]:
        """Up to ``batch_size`` waiting inputs, oldest first; none are waited for."""
        claimed = []
        with self._lock:
            for item in self.spool.pending_items():
                if item.path.name not in self._claimed:
                    self._claimed.add(item.path.name)
                    claimed.append(item)
                    if len(claimed) == self.config.batch_size:
                        break
        return claimed

    def warm_up(self) -> None:
        """One synthetic study (a phantom made in memory) through the model and every wanted
        renderer, nothing written: the first real study then does not pay for lazy imports,
        the renderers' prototypes and the convolutions' first runs (about 2 s)."""
        import numpy as np

        from ..data.phantom import render_phantom

        started = time.time()
        phantom = render_phantom(np.random.default_rng(0), view="PA", size=(512, 512))
        try:
            report = self.reporter.run(phantom.dataset)
            for kind in self.kinds:
                _encoded(report, kind)
        except Exception as exc:  # never worth stopping for: the real studies will tell
            reason = getattr(exc, "reason", "internal-error")
            event(log, logging.WARNING, "warm-up-failed", reason=reason, error=repr(exc))
            return
        event(log, logging.INFO, "warmed-up", seconds=round(time.time() - started, 3))

    def run(self) -> None:
        with self._warm:  # the other worker threads wait for it
            if not self._warmed:
                self.warm_up()
                self._warmed = True
        while not self.stop.is_set():
            self.wakeup.clear()
            items = self._claim()
            if not items:
                self.wakeup.wait(1.0)
                continue
            try:
                self.process(items)
            except Exception as exc:  # outside any one input's guard: a bug; keep the node up
                log.exception("internal-error", extra={"fields": {"error": repr(exc)}})
                for item in items:
                    if item.path.exists():
                        self._finish(item, "failed", "internal-error", repr(exc))
            finally:
                with self._lock:
                    self._claimed.difference_update(item.path.name for item in items)

    def process(self, items: list[PendingItem]) -> None:
        """Read each input, put those that read through the model together, then report and
        post each. An input that was being processed when the node stopped goes through the
        model alone: if it is what stops the node, it must not take others with it."""
        started = time.time()
        together, alone = [], []
        for item in items:
            with self._guard(item):
                attempts = self.spool.start_attempt(item)
                radiograph = self._read(item, attempts)
                if radiograph is not None:
                    (together if attempts == 1 else alone).append((item, radiograph))
        for group in (together, *([pair] for pair in alone)):
            found = self._predict([radiograph for _, radiograph in group])
            for (item, _), findings in zip(group, found, strict=True):
                with self._guard(item):
                    if isinstance(findings, Exception):
                        raise findings
                    self._deliver(item, self.reporter.report(findings), started)

    @contextmanager
    def _guard(self, item: PendingItem) -> Iterator[None]:
        """A bug must never stop the node or the other inputs; this input is kept."""
        try:
            yield
        except Exception as exc:
            log.exception(
                "internal-error", extra={"fields": {"path": item.path.name, "error": repr(exc)}}
            )
            self._finish(item, "failed", "internal-error", repr(exc))

    def _read(self, item: PendingItem, attempts: int) -> Radiograph | None:
        """The input's radiograph; None when it is finished here (refused, failed, given up)."""
        if attempts > MAX_PROCESS_ATTEMPTS:
            message = f"the node stopped {attempts - 1} times while processing this input"
            self._finish(item, "failed", "worker-crash", message)
            return None
        try:
            return self.reporter.read(item.path)
        except UnsupportedStudyError as exc:
            self._finish(item, "refused", exc.reason, str(exc))
        except AnaxReportError as exc:
            self._finish(item, "failed", exc.reason, str(exc))
        return None

    def _predict(self, radiographs: list[Radiograph]) -> list[RegionFindings | Exception]:
        """The radiographs' findings in one pass; should that raise, each one's alone, so that
        an error is the input's that causes it."""
        try:
            return list(self.reporter.predict_many(radiographs))
        except Exception as exc:
            if len(radiographs) == 1:
                return [exc]
        return [self._predict([radiograph])[0] for radiograph in radiographs]

    def _deliver(self, item: PendingItem, report: Report, started: float) -> None:
        """Render the report, post each result to its outboxes, then let the input go."""
        results = self._render(item, report)
        if self.kinds and not results:
            self._finish(item, "failed", "export-failed", "no output could be rendered")
            return
        for destination in self.config.destinations:
            for kind in destination.outputs:
                if kind in results:
                    name, data = results[kind]
                    self.spool.post(destination.name, name, data)
        if self.config.retain_reported:
            self.spool.finish(item, "reported")
        else:
            self.spool.discard(item)
        latency = time.time() - item.received_ns / 1e9
        self.metrics.count("reported")
        self.metrics.observe("processing", time.time() - started)
        self.metrics.observe("queue_to_results", latency)
        event(
            log,
            logging.INFO,
            "reported",
            sop_instance_uid=item.sop_instance_uid,
            study_instance_uid=report.study.study_instance_uid,
            outputs=sorted(results),
            seconds=round(time.time() - started, 3),
            latency_s=round(latency, 3),
        )
        for posted in self.on_posted:
            posted.set()

    def _render(self, item: PendingItem, report: Report) -> dict[str, tuple[str, bytes]]:
        """Each wanted format as (outbox file name, bytes); a format that cannot be made is
        logged and left out (e.g. no region found: no TID 1500 SR, the FHIR report still)."""
        results: dict[str, tuple[str, bytes]] = {}
        prefix = f"{item.received_ns:020d}"
        for kind in self.kinds:
            try:
                uid, data = _encoded(report, kind)
            except AnaxReportError as exc:
                self.metrics.count("render_failures")
                event(
                    log,
                    logging.WARNING,
                    "render-failed",
                    kind=kind,
                    reason=exc.reason,
                    sop_instance_uid=item.sop_instance_uid,
                    error=str(exc),
                )
                continue
            if uid is None:  # a FHIR Bundle is named by its input
                results[kind] = (f"{prefix}-{kind}-{item.sop_instance_uid}.json", data)
            else:
                results[kind] = (f"{prefix}-{kind}-{uid}.dcm", data)
        return results

    def _finish(self, item: PendingItem, outcome: str, reason: str, message: str) -> None:
        note = {
            "outcome": outcome,
            "reason": reason,
            "message": message,
            "sop_instance_uid": item.sop_instance_uid,
        }
        target = self.spool.finish(item, outcome, note)
        self.metrics.count(outcome)
        event(
            log,
            logging.WARNING,
            outcome,
            sop_instance_uid=item.sop_instance_uid,
            reason=reason,
            error=message,
            path=str(target),
        )


def _encoded(report: Report, kind: str) -> tuple[str | None, bytes]:
    """One output format of ``report`` as bytes, with the SOP Instance UID of a DICOM result
    (None for a FHIR Bundle: ``fhir-R4B`` or ``fhir-R5``)."""
    if kind.startswith("fhir-"):
        return None, pretty.dumps(report.to_fhir(kind.removeprefix("fhir-")), None).encode()
    data = report.to_sr_file() if kind == "sr" else report.to_gsps_file()
    return result_uid(report, kind), data
