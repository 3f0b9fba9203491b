"""Deterministic DICOM UIDs for everything anaxreport writes (PS3.5 B.2, UUID-derived ``2.25.``).

Reprocessing the same image with the same model, rules and thresholds gives the same UIDs, so a
node that crashes and retries never makes two different result objects for one input; a change
of model, rules or thresholds gives new ones. Tracking UIDs tie an SR measurement group to the
FHIR Observations of the same region.
"""

from __future__ import annotations

import hashlib
import uuid
from functools import lru_cache

from ..report import Provenance, Report
from ..vocab import Region

__all__ = [
    "derived_uid",
    "derived_uuid",
    "result_uid",
    "series_uid",
    "study_series_uid",
    "tracking_uid",
]

#: Fixed for all time: changing it would change every UID anaxreport has ever written.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:anaxreport")
_NAMESPACE_BYTES = _NAMESPACE.bytes
# uuid.UUID(bytes=..., version=5) sets these bits: RFC 4122 variant, version 5
_CLEARED = ~((0xC000 << 48) | (0xF000 << 64))
_SET = (0x8000 << 48) | (5 << 76)


@lru_cache(maxsize=4096)
def derived_uuid(*parts: str) -> int:
    """``uuid.uuid5(namespace, "\\x1f".join(parts)).int``, without making a UUID object, and
    remembered: the SR, the GSPS and the FHIR Bundle of a report ask for the same ones."""
    name = "\x1f".join(parts).encode()
    digest = hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()
    return (int.from_bytes(digest[:16], "big") & _CLEARED) | _SET


def derived_uid(*parts: str) -> str:
    """A ``2.25.<uuid5 as integer>`` UID from the given strings (at most 44 characters)."""
    return f"2.25.{derived_uuid(*parts)}"


def result_uid(report: Report, kind: str) -> str:
    """The SOP Instance UID of the ``kind`` ("sr", "gsps") object made for this report."""
    return derived_uid(kind, *report.result_key)


def series_uid(report: Report, kind: str) -> str:
    """The new series of ``kind`` objects: one per study, model and kind."""
    return study_series_uid(kind, report.study.study_instance_uid, report.provenance)


def study_series_uid(kind: str, study_instance_uid: str, provenance: Provenance) -> str:
    """:func:`series_uid` of a study and model, given apart."""
    return derived_uid(
        kind,
        "series",
        study_instance_uid,
        provenance.model_name,
        provenance.model_version,
        provenance.weights_sha256,
    )


def tracking_uid(report: Report, region: Region) -> str:
    """The tracking UID of a region's SR measurement group (also each FHIR Observation's
    identifier for that region)."""
    return derived_uid("tracking", region.name, *report.result_key)
