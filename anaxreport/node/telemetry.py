"""What the node tells its operators: JSON log lines, counters, and a health/metrics endpoint.

Log lines are one JSON object each (``event`` plus fields) so a log shipper can index them
without parsing prose. They carry UIDs, AE titles, reason codes and timings, never a patient's
name, ID or birth date: the fields are chosen by the caller from an allow-list
(:data:`LOGGED_FIELDS`), and :func:`event` refuses any other.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["LOGGED_FIELDS", "JsonFormatter", "Metrics", "MetricsServer", "event"]

#: The only fields a node log line may carry (no patient identity, by construction).
LOGGED_FIELDS = frozenset(
    {
        "ae_title",
        "address",
        "attempt",
        "calling_ae",
        "called_ae",
        "count",
        "delay_s",
        "destination",
        "error",
        "kind",
        "latency_s",
        "outputs",
        "path",
        "peer",
        "port",
        "reason",
        "removed",
        "result_uid",
        "sop_class_uid",
        "sop_instance_uid",
        "stats",
        "status",
        "study_instance_uid",
        "url",
        "version",
        "seconds",
    }
)


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one structured event; ``fields`` must be in :data:`LOGGED_FIELDS`."""
    unknown = set(fields) - LOGGED_FIELDS
    if unknown:
        raise ValueError(f"field(s) {sorted(unknown)} are not allowed in node logs")
    logger.log(level, name, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, event, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Metrics:
    """Thread-safe counters and recent latencies (the last 1000 of each kind)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._latencies: dict[str, deque[float]] = {}
        self.started = time.time()

    def count(self, name: str, destination: str = "") -> None:
        key = f"{name}:{destination}" if destination else name
        with self._lock:
            self._counts[key] += 1

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            self._latencies.setdefault(name, deque(maxlen=1000)).append(seconds)

    def snapshot(self, gauges: dict[str, Any]) -> dict[str, Any]:
        """Counters, latency p50/p95/max (seconds) and the given gauges, as plain data."""
        with self._lock:
            counts = dict(self._counts)
            latencies = {k: list(v) for k, v in self._latencies.items()}
        totals = {k: v for k, v in counts.items() if ":" not in k}
        per_destination: dict[str, dict[str, int]] = {}
        for key, value in counts.items():
            if ":" in key:
                name, destination = key.split(":", 1)
                per_destination.setdefault(destination, {})[name] = value
        return {
            "uptime_s": round(time.time() - self.started, 3),
            **gauges,
            "counts": totals,
            "destinations": per_destination,
            "latency_s": {
                name: {
                    "p50": round(_quantile(values, 0.5), 4),
                    "p95": round(_quantile(values, 0.95), 4),
                    "max": round(max(values), 4),
                    "n": len(values),
                }
                for name, values in latencies.items()
            },
        }


def prometheus(snapshot: dict[str, Any]) -> str:
    """The snapshot in the Prometheus text exposition format (version 0.0.4)."""
    lines = [
        f"anaxreport_uptime_seconds {snapshot['uptime_s']}",
        f"anaxreport_queue_depth {snapshot['queue_depth']}",
    ]
    for destination, depth in snapshot["outbox_depth"].items():
        lines.append(f'anaxreport_outbox_depth{{destination="{destination}"}} {depth}')
    for name, value in sorted(snapshot["counts"].items()):
        lines.append(f"anaxreport_{name}_total {value}")
    for destination, counts in sorted(snapshot["destinations"].items()):
        for name, value in sorted(counts.items()):
            lines.append(f'anaxreport_{name}_total{{destination="{destination}"}} {value}')
    for name, stats in sorted(snapshot["latency_s"].items()):
        for q in ("p50", "p95"):
            quantile = "0.5" if q == "p50" else "0.95"
            lines.append(f'anaxreport_{name}_seconds{{quantile="{quantile}"}} {stats[q]}')
        lines.append(f"anaxreport_{name}_seconds_count {stats['n']}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """``GET /health`` (JSON snapshot) and ``GET /metrics`` (Prometheus) on a local port."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/health":
                    body, kind = json.dumps(snapshot()).encode(), "application/json"
                elif self.path.split("?")[0] == "/metrics":
                    body, kind = prometheus(snapshot()).encode(), "text/plain; version=0.0.4"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are not node events

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="anaxreport-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
