"""What the two DICOM writers (SR and GSPS) share: the source header, the equipment, the errors.

Both objects belong to the source image's study and patient (PS3.3 C.7.1.1, C.7.2.1), so both
start from a copy of the source header; anonymised inputs often lack the type 2 attributes that
highdicom reads, so the copy gets empty ones (empty is valid for type 2; the header itself is
never changed). Both say which model made them and that they are not for diagnostic use, in the
series description and in a Contributing Equipment item of purpose "Processing Algorithm" as the
IHE AI Results profile asks (highdicom's own class only takes DCM purposes, so the item is raw).
Any failure becomes one :class:`~anaxreport.errors.ExportError` naming the source SOP Instance
UID, so the CLI never shows a traceback.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept as HdCodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ..errors import ExportError
from ..vocab import LOCAL_SCHEME, CodedConcept
from .uids import derived_uid

if TYPE_CHECKING:
    from ..report import Report

__all__ = [
    "MANUFACTURER",
    "PROCESSING_ALGORITHM",
    "ai_equipment_item",
    "append_ai_equipment",
    "coded",
    "coding_schemes",
    "device_uid",
    "export_errors",
    "not_for_diagnosis",
    "software_versions",
    "source_header",
]

#: Manufacturer of every object anaxreport writes (General Equipment, PS3.3 C.7.5.1).
MANUFACTURER = "anaxreport"

#: IHE Radiology AI Results (AIR) purpose of reference of the algorithm's equipment item.
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")

#: Patient/study attributes highdicom reads from the source (type 2 in the IODs: may be empty).
TYPE2_IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)

_LONG_STRING = 64  # LO: SeriesDescription, ContentDescription


def source_header(report: Report, what: str) -> Dataset:
    """A copy of the source header with empty type 2 identity attributes where absent.

    Raises :class:`ExportError` when the report has no header (hand-made findings).
    """
    if report.header is None:
        raise ExportError(
            f"cannot write the {what} for SOP Instance UID "
            f"{report.study.sop_instance_uid or '(unknown)'}: the report has no source DICOM "
            "header (findings made by hand, not read from a DICOM file)"
        )
    header = copy.deepcopy(report.header)
    for keyword in TYPE2_IDENTITY:
        if keyword not in header or header[keyword].value is None:
            setattr(header, keyword, "")
    return header


@contextmanager
def export_errors(report: Report, what: str) -> Iterator[None]:
    """Turn any failure inside the block into one :class:`ExportError` line naming the study."""
    try:
        yield
    except ExportError:
        raise
    except Exception as exc:  # highdicom/pydicom raise ValueError, TypeError, AttributeError...
        lines = str(exc).strip().splitlines() or [""]
        raise ExportError(
            f"cannot write the {what} for SOP Instance UID {report.study.sop_instance_uid}: "
            f"{type(exc).__name__}: {lines[0][:300]}"
        ) from exc


def coded(concept: CodedConcept | Code) -> HdCodedConcept:
    """A vocab (or pydicom) code as the highdicom CodedConcept the SR and GSPS classes take."""
    if isinstance(concept, Code):
        return HdCodedConcept.from_code(concept)
    return HdCodedConcept(concept.value, concept.scheme, concept.meaning)


def coding_schemes() -> list[CodingSchemeIdentificationItem]:
    """Coding Scheme Identification items (PS3.3 C.12.1.1.6) of the private schemes used."""
    return [
        CodingSchemeIdentificationItem(
            designator=LOCAL_SCHEME,
            name="anaxreport local codes",
            responsible_organization="anaxreport",
        ),
        CodingSchemeIdentificationItem(
            designator="99IHE",
            name="IHE Radiology codes",
            responsible_organization="IHE",
        ),
    ]


def device_uid(report: Report) -> str:
    """The algorithm as a device: one UID per model name, version and weights."""
    p = report.provenance
    return derived_uid("device", p.model_name, p.model_version, p.weights_sha256)


def software_versions(report: Report) -> list[str]:
    """The software and the model version (Software Versions is LO, multi-valued)."""
    return [report.provenance.software[:_LONG_STRING], report.provenance.model_version]


def not_for_diagnosis(report: Report) -> str:
    """A LO (≤ 64 characters) saying AI output, not for diagnostic use, and the model.

    The warning comes first so that a long model name is what gets cut.
    """
    p = report.provenance
    return f"AI output, not for diagnostic use: {p.model_name} {p.model_version}"[:_LONG_STRING]


def ai_equipment_item(report: Report) -> Dataset:
    """The Contributing Equipment item of the algorithm (IHE AIR, PS3.3 C.12.1 Table C.12-1)."""
    p = report.provenance
    purpose = Dataset()
    purpose.CodeValue = PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = p.model_name[:_LONG_STRING]
    item.SoftwareVersions = software_versions(report)
    item.DeviceUID = device_uid(report)
    item.ContributionDescription = (
        f"{p.model_name} {p.model_version} (weights sha256 {p.weights_sha256}, "
        f"trained on {p.training_data}; {p.software}). {p.disclaimer}"
    )[:1024]
    return item


def append_ai_equipment(dataset: Dataset, report: Report) -> None:
    """Append the algorithm's item after the ones highdicom wrote (source, highdicom)."""
    items = list(dataset.get("ContributingEquipmentSequence", []))
    dataset.ContributingEquipmentSequence = [*items, ai_equipment_item(report)]
