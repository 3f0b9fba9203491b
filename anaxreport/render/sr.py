"""The report as a DICOM Comprehensive 3D SR: TID 1500 Imaging Measurement Report (PS3.16).

Why this shape (DESIGN.md §6): a PACS or an AI results viewer reads the region boxes and calls
without parsing prose, and the FHIR Observations point at the same regions by tracking UID.

Tree::

    CONTAINER Imaging Measurement Report (DCM 126000), TID 1500
      language (TID 1204), observer context: the algorithm as a device (TID 1001/1004)
      procedure reported: LOINC 36554-4 "XR Chest Single view"
      CONTAINER Imaging Measurements (DCM 126010)
        one Planar ROI group (TID 1410) per region with a box, in vocab order:
          tracking identifier = region name, tracking UID = uids.tracking_uid(report, region)
          SCOORD POLYLINE, closed 5 points (column, row) in source pixels; purpose "Bounded by"
          finding site = region site (+ laterality, + topographical modifier)
          algorithm identification (TID 4019): model name, version, weights sha256
          per finding: NUM <finding code> = probability, UCUM "1"
          per finding: CODE <finding code> = Present (SCT 52101004) / Absent (SCT 272519000),
          the rule layer's region call
      CONTAINER Qualitative Evaluations (UMLS C0034375), TID 1500 rows 12-14
        TEXT Impression (DCM 121073), one per impression sentence
        TEXT Comment (DCM 121106): which model made it; not for diagnostic use
        TEXT Comment: the regions the detector did not find (they have no group), if any

A region without a box has no group (TID 1410 needs an image region); it is named in the last
comment instead. A report where no region was found cannot be a TID 1500 document (it needs at
least one measurement group) and raises :class:`~anaxreport.errors.ExportError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ..errors import ExportError
from ..vocab import ABSENT, BOUNDED_BY, FINDINGS, PRESENT, PROCEDURE, Laterality
from ._dicom import (
    MANUFACTURER,
    append_ai_equipment,
    coded,
    coding_schemes,
    device_uid,
    export_errors,
    not_for_diagnosis,
    software_versions,
    source_header,
)
from .uids import result_uid, series_uid, tracking_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..report import RegionResult, Report

__all__ = ["SR_SERIES_NUMBER", "render_sr"]

#: TID 1500 row 12 container of document-level evaluations.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: Series number of anaxreport SR series (a new series in the source study).
SR_SERIES_NUMBER = 9901

_WHAT = "DICOM SR"


def render_sr(report: Report) -> Dataset:
    """The report as a Comprehensive 3D SR (TID 1500) in the source image's study.

    Raises :class:`~anaxreport.errors.ExportError` when the report has no source header, found
    no region, or highdicom refuses the content.
    """
    header = source_header(report, _WHAT)
    with export_errors(report, _WHAT):
        groups = [_region_group(report, r, header) for r in report.regions if r.found]
        if not groups:
            raise ExportError(
                f"cannot write the {_WHAT} for SOP Instance UID "
                f"{report.study.sop_instance_uid}: no region was found, and TID 1500 needs at "
                "least one measurement group"
            )
        content = hd.sr.MeasurementReport(
            observation_context=_observation_context(report),
            procedure_reported=coded(PROCEDURE),
            imaging_measurements=groups,
        )
        content[0].ContentSequence.append(_evaluations(report))
        sr = hd.sr.Comprehensive3DSR(
            evidence=[header],
            content=content[0],
            series_instance_uid=series_uid(report, "sr"),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=result_uid(report, "sr"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=not_for_diagnosis(report),
            manufacturer_model_name=report.provenance.model_name[:64],
            software_versions=software_versions(report),
            coding_schemes=coding_schemes(),
        )
        append_ai_equipment(sr, report)
    return sr


def _observation_context(report: Report) -> hd.sr.ObservationContext:
    """The algorithm as the observing device (TID 1002/1004), with the same device UID as the
    Contributing Equipment item."""
    p = report.provenance
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(report),
        name=p.model_name[:64],
        manufacturer_name=MANUFACTURER,
        model_name=f"{p.model_name} {p.model_version}"[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=device,
        )
    )


def _algorithm(report: Report) -> hd.sr.AlgorithmIdentification:
    p = report.provenance
    return hd.sr.AlgorithmIdentification(
        name=p.model_name,
        version=p.model_version,
        parameters=[f"weights sha256 {p.weights_sha256}"],
        manufacturer=MANUFACTURER,
    )


def _finding_site(result: RegionResult) -> hd.sr.FindingSite:
    region = result.region
    side = region.laterality
    return hd.sr.FindingSite(
        anatomic_location=coded(region.site),
        laterality=None if side is Laterality.UNPAIRED else coded(side.value),
        topographical_modifier=None if region.modifier is None else coded(region.modifier),
    )


def _image_region(result: RegionResult, header: Dataset) -> hd.sr.ImageRegion:
    """The box as a closed 5-point POLYLINE in (column, row) source pixels."""
    if result.box is None:
        raise ValueError(f"region {result.name} has no box")
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(result.box.polyline(), dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion.from_source_image(header),
    )


def _region_group(
    report: Report, result: RegionResult, header: Dataset
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for one found region: its box, site, probabilities and Present/Absent calls."""
    region = result.region
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(report, region), identifier=region.name
        ),
        referenced_region=_image_region(result, header),
        algorithm_id=_algorithm(report),
        finding_sites=[_finding_site(result)],
        geometric_purpose=coded(BOUNDED_BY),
        measurements=[
            hd.sr.Measurement(
                name=coded(f.code),
                value=float(result.probabilities[f.index]),
                unit=codes.UCUM.NoUnits,
            )
            for f in FINDINGS
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=coded(f.code),
                value=coded(PRESENT if report.call(region, f).present else ABSENT),
            )
            for f in FINDINGS
        ],
    )


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _evaluations(report: Report) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-14: the impression, the provenance and the missing regions as TEXT."""
    p = report.provenance
    texts = [_text(codes.DCM.Impression, sentence) for sentence in report.impression]
    texts.append(
        _text(
            codes.DCM.Comment,
            f"Made by {p.model_name} {p.model_version} (weights sha256 {p.weights_sha256}, "
            f"trained on {p.training_data}) with {p.software} and rules {report.rules.name} "
            f"{report.rules.version}. {p.disclaimer}",
        )
    )
    missing = [r.name for r in report.regions if not r.found]
    if missing:
        texts.append(
            _text(
                codes.DCM.Comment,
                "Regions the detector did not find (no measurement group): "
                + ", ".join(missing)
                + ".",
            )
        )
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(texts)
    return container
