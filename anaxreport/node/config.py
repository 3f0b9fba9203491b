"""The node's configuration: typed, validated at construction, read from TOML plus flags.

Configuration is data (templates/node.toml documents every key). Each value object checks its
own fields when it is built, so a bad AE title or port fails at start-up with one line naming
the key, never later on the first association. Paths in a file are relative to that file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..model.config import RUNTIMES
from ..tomlfile import read_toml

__all__ = [
    "DELIVERABLE",
    "DicomDestination",
    "FhirDestination",
    "MetricsConfig",
    "NodeConfig",
    "RetryPolicy",
    "StowDestination",
    "TlsConfig",
    "load_node_config",
]

#: What a DICOM destination (DIMSE or STOW-RS) can be sent.
DELIVERABLE = ("sr", "gsps")


def _fail(key: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"node configuration: {key}: {message}")


def check_ae_title(value: object, key: str) -> str:
    """An AE title per PS3.5 6.2 (AE VR): 1-16 characters, no backslash or control characters,
    not only spaces. Leading/trailing spaces are not significant and are stripped."""
    if not isinstance(value, str):
        raise _fail(key, f"must be a string, got {value!r}")
    title = value.strip()
    if not 1 <= len(title) <= 16 or "\\" in title or not title.isprintable() or not title.isascii():
        raise _fail(key, f"must be 1-16 printable ASCII characters without '\\', got {value!r}")
    return title


def _check_port(value: object, key: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise _fail(key, f"must be an integer port in [{low}, 65535], got {value!r}")
    return value


def _check_number(value: object, key: str, *, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
        raise _fail(key, f"must be a number ≥ {low:g}, got {value!r}")
    return float(value)


def _check_url(value: object, key: str) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise _fail(key, f"must be an http:// or https:// URL, got {value!r}")
    if not urlsplit(value).netloc:
        raise _fail(key, f"has no host: {value!r}")
    return value.rstrip("/")


def _check_name(value: object, key: str) -> str:
    """A destination name is also a folder name: ASCII letters and digits first, then those
    and '-', '_', '.' (so never '..' or a hidden folder)."""
    if (
        not isinstance(value, str)
        or not value.isascii()
        or not value[:1].isalnum()
        or not all(c.isalnum() or c in "-_." for c in value)
    ):
        raise _fail(key, f"must start with a letter or digit, then letters, digits, '-', '_' "
                         f"or '.', got {value!r}")  # fmt: skip
    return value


def _check_bool(value: object, key: str) -> None:
    if not isinstance(value, bool):
        raise _fail(key, f"must be true or false, got {value!r}")


def _check_outputs(value: object, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise _fail(key, f"must be a non-empty list of {DELIVERABLE}, got {value!r}")
    unknown = [v for v in value if v not in DELIVERABLE]
    if unknown:
        raise _fail(key, f"unknown output(s) {unknown}; known: {list(DELIVERABLE)}")
    return tuple(dict.fromkeys(value))


@dataclass(frozen=True)
class DicomDestination:
    """A DIMSE storage SCP (a PACS) that receives the SR and/or GSPS by C-STORE."""

    name: str
    ae_title: str
    host: str
    port: int
    outputs: tuple[str, ...] = DELIVERABLE
    tls: bool = False

    def __post_init__(self) -> None:
        key = f"destination {self.name!r}"
        _check_name(self.name, f"{key}.name")
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, f"{key}.ae_title"))
        if not isinstance(self.host, str) or not self.host:
            raise _fail(f"{key}.host", f"must be a host name or address, got {self.host!r}")
        _check_port(self.port, f"{key}.port")
        object.__setattr__(self, "outputs", _check_outputs(self.outputs, f"{key}.outputs"))
        _check_bool(self.tls, f"{key}.tls")

    @classmethod
    def parse(cls, text: str, outputs: tuple[str, ...] = DELIVERABLE) -> DicomDestination:
        """``AE@HOST:PORT`` (the ``--destination`` flag); the name is the AE title."""
        ae, sep, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not sep or not colon or not port.isdigit():
            raise _fail("--destination", f"must be AE@HOST:PORT, got {text!r}")
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in ae.strip().lower())
        return cls(
            name=name.lstrip("-_.") or "pacs",
            ae_title=ae,
            host=host,
            port=int(port),
            outputs=outputs,
        )


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb server that receives the SR and/or GSPS by STOW-RS (``POST {url}/studies``).

    ``token_env`` names an environment variable holding a bearer token, so no secret sits in
    the file."""

    name: str
    url: str
    outputs: tuple[str, ...] = DELIVERABLE
    token_env: str = ""

    def __post_init__(self) -> None:
        key = f"destination {self.name!r}"
        _check_name(self.name, f"{key}.name")
        object.__setattr__(self, "url", _check_url(self.url, f"{key}.url"))
        object.__setattr__(self, "outputs", _check_outputs(self.outputs, f"{key}.outputs"))


@dataclass(frozen=True)
class FhirDestination:
    """A FHIR server that receives the report as a transaction Bundle (``POST {url}``)."""

    name: str
    url: str
    version: str = "R4B"
    token_env: str = ""

    def __post_init__(self) -> None:
        key = f"destination {self.name!r}"
        _check_name(self.name, f"{key}.name")
        object.__setattr__(self, "url", _check_url(self.url, f"{key}.url"))
        if self.version not in ("R4B", "R5"):
            raise _fail(f"{key}.version", f"must be R4B or R5, got {self.version!r}")

    @property
    def outputs(self) -> tuple[str, ...]:
        return (f"fhir-{self.version}",)


Destination = DicomDestination | StowDestination | FhirDestination
_DESTINATION_TYPES: dict[str, type[Destination]] = {
    "dimse": DicomDestination,
    "stow-rs": StowDestination,
    "fhir": FhirDestination,
}


@dataclass(frozen=True)
class RetryPolicy:
    """Delivery retries: exponential backoff with jitter between ``initial_s`` and ``max_s``.

    A destination that cannot be reached (connection refused, association rejected or
    aborted, HTTP 5xx) is retried for ever: results wait in the outbox until it is back. A
    result the destination itself refuses (a failure status, no presentation context for its
    SOP class, HTTP 4xx) is tried ``max_attempts`` times and then moved to the dead-letter
    folder with a log line, where an operator can look at it.
    """

    initial_s: float = 1.0
    max_s: float = 300.0
    max_attempts: int = 5
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        _check_number(self.initial_s, "delivery.initial_s", low=0.01)
        _check_number(self.max_s, "delivery.max_s", low=self.initial_s)
        _check_number(self.timeout_s, "delivery.timeout_s", low=0.1)
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or (self.max_attempts < 1)
        ):
            raise _fail(
                "delivery.max_attempts", f"must be an integer ≥ 1, got {self.max_attempts!r}"
            )

    def delay(self, failures: int, jitter: float) -> float:
        """Seconds to wait after ``failures`` consecutive failures; ``jitter`` in [0, 1)."""
        base = min(self.max_s, self.initial_s * 2 ** max(0, failures - 1))
        return base * (0.5 + 0.5 * jitter)


@dataclass(frozen=True)
class TlsConfig:
    """DICOM TLS (PS3.15 B.1): our certificate and key, and the CA that peers must chain to.

    With ``ca_certificates`` set, incoming associations must present a certificate signed by
    it (mutual TLS) and outgoing ones verify the PACS against it."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None

    def __post_init__(self) -> None:
        for name in ("certificate", "private_key", "ca_certificates"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise _fail(f"tls.{name}", f"no such file: {path}")


@dataclass(frozen=True)
class MetricsConfig:
    """The health/metrics HTTP endpoint (``port`` 0: off) and the periodic statistics line."""

    host: str = "127.0.0.1"
    port: int = 0
    log_interval_s: float = 60.0

    def __post_init__(self) -> None:
        _check_port(self.port, "metrics.port", allow_zero=True)
        _check_number(self.log_interval_s, "metrics.log_interval_s", low=0.0)


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``anaxreport serve`` needs; see templates/node.toml for each key."""

    spool: Path
    ae_title: str = "ANAXREPORT"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aes: tuple[str, ...] = ()
    check_called_ae: bool = True
    retain_reported: bool = True
    min_free_mb: int = 256
    workers: int = 1
    batch_size: int = 4
    warm_up: bool = True
    destinations: tuple[Destination, ...] = ()
    delivery: RetryPolicy = field(default_factory=RetryPolicy)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tls: TlsConfig | None = None
    model: Path | None = None
    rules: Path | None = None
    thresholds: Path | None = None
    gate: Path | None = None
    runtime: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "node.ae_title"))
        if self.runtime not in RUNTIMES:
            raise _fail(
                "reporter.runtime", f"must be one of {list(RUNTIMES)}, got {self.runtime!r}"
            )
        _check_port(self.port, "node.port", allow_zero=True)
        if isinstance(self.allowed_calling_aes, str):
            raise _fail("node.allowed_calling_aes", "must be a list of AE titles")
        allowed = tuple(
            check_ae_title(ae, "node.allowed_calling_aes") for ae in self.allowed_calling_aes
        )
        object.__setattr__(self, "allowed_calling_aes", allowed)
        _check_bool(self.check_called_ae, "node.check_called_ae")
        _check_bool(self.retain_reported, "node.retain_reported")
        _check_bool(self.warm_up, "node.warm_up")
        for name, low in (("workers", 1), ("batch_size", 1), ("min_free_mb", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise _fail(f"node.{name}", f"must be an integer of at least {low}, got {value!r}")
        names = [d.name for d in self.destinations]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise _fail("destinations", f"names must be unique, repeated: {duplicated}")
        if any(isinstance(d, DicomDestination) and d.tls for d in self.destinations) and (
            self.tls is None
        ):
            raise _fail("destinations", "a destination has tls = true but there is no [tls] table")


_NODE_KEYS = {
    "ae_title",
    "host",
    "port",
    "allowed_calling_aes",
    "check_called_ae",
    "spool",
    "retain_reported",
    "min_free_mb",
    "workers",
    "batch_size",
    "warm_up",
}
_REPORTER_PATHS = {"model", "rules", "thresholds", "gate"}
_REPORTER_KEYS = {*_REPORTER_PATHS, "runtime"}
_TOP_KEYS = {"node", "reporter", "destinations", "delivery", "metrics", "tls"}


def _table(data: Mapping[str, Any], name: str, known: set[str]) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise _fail(name, "must be a table")
    unknown = sorted(set(table) - known)
    if unknown:
        raise _fail(name, f"unknown key(s) {unknown}; known: {sorted(known)}")
    return dict(table)


def _known(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _destination(item: object, index: int) -> Destination:
    key = f"destinations[{index}]"
    if not isinstance(item, dict):
        raise _fail(key, "must be a table")
    kind = item.get("type")
    if kind not in _DESTINATION_TYPES:
        raise _fail(f"{key}.type", f"must be one of {list(_DESTINATION_TYPES)}, got {kind!r}")
    cls = _DESTINATION_TYPES[kind]
    table = _table({key: {k: v for k, v in item.items() if k != "type"}}, key, _known(cls))
    if "outputs" in table and isinstance(table["outputs"], list):
        table["outputs"] = tuple(table["outputs"])
    table.setdefault("name", f"{kind}-{index}")
    try:
        return cls(**table)
    except TypeError as exc:  # a missing required key
        raise _fail(key, f"{exc}".split("() ", 1)[-1]) from None


def _paths(table: dict[str, Any], names: set[str], base: Path, key: str) -> dict[str, Any]:
    for name in names & set(table):
        if not isinstance(table[name], str) or not table[name]:
            raise _fail(f"{key}.{name}", f"must be a path, got {table[name]!r}")
        table[name] = (base / os.path.expanduser(table[name])).resolve()
    return table


def load_node_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> NodeConfig:
    """The configuration file (if any) with command-line ``overrides`` applied on top.

    ``overrides`` are :class:`NodeConfig` fields; ``None`` values are ignored, and
    ``destinations`` given here are added to the file's. Raises
    :class:`~anaxreport.errors.ConfigurationError` naming the file and key.
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    origin = "command line"
    if path is not None:
        path = Path(path)
        base, origin = path.resolve().parent, str(path)
        data, _ = read_toml(path, "node configuration")
    try:
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise _fail("file", f"unknown table(s) {unknown}; known: {sorted(_TOP_KEYS)}")
        node = _paths(_table(data, "node", _NODE_KEYS), {"spool"}, base, "node")
        reporter = _paths(
            _table(data, "reporter", _REPORTER_KEYS), _REPORTER_PATHS, base, "reporter"
        )
        destinations = data.get("destinations", [])
        if not isinstance(destinations, list):
            raise _fail("destinations", "must be an array of tables ([[destinations]])")
        parsed = [_destination(item, i) for i, item in enumerate(destinations)]
        settings: dict[str, Any] = {**node, **reporter}
        if "allowed_calling_aes" in settings and isinstance(settings["allowed_calling_aes"], list):
            settings["allowed_calling_aes"] = tuple(settings["allowed_calling_aes"])
        settings["delivery"] = RetryPolicy(**_table(data, "delivery", _known(RetryPolicy)))
        settings["metrics"] = MetricsConfig(**_table(data, "metrics", _known(MetricsConfig)))
        if "tls" in data:
            tls = _table(data, "tls", _known(TlsConfig))
            missing = sorted({"certificate", "private_key"} - set(tls))
            if missing:
                raise _fail("tls", f"missing key(s) {missing}")
            settings["tls"] = TlsConfig(**_paths(tls, _known(TlsConfig), base, "tls"))
        extra = overrides.pop("destinations", None) or ()
        settings["destinations"] = (*parsed, *extra)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        if "spool" not in settings:
            raise _fail("node.spool", "no spool folder: set it in the file or with --spool")
        settings["spool"] = Path(settings["spool"])
        return NodeConfig(**settings)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{origin}: {exc}") from None
