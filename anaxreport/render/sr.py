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

Speed: built naively with highdicom, the ~1700 items of a document take about a second, mostly
highdicom re-validating and deep-copying them and pydicom converting each value again. So
highdicom builds each measurement group once per region and model, and the document root once
per model, with placeholder values (*prototypes*, cached); a report's document is made of
copies of them holding its own values (tracking UID, box, probabilities, source image) and of
the prototype items that every report shares (finding site, algorithm, calls, concept names).
Shared items are read-only: nothing here changes an item once it is in a tree, and copies get
their own sequences, so one report's document never changes another's. The output is the same
as highdicom's, element for element.
"""

from __future__ import annotations

import copy
from collections.abc import MutableSequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

import highdicom as hd
import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ComputedRadiographyImageStorage
from pydicom.valuerep import DS

from ..errors import ExportError
from ..vocab import ABSENT, BOUNDED_BY, FINDINGS, PRESENT, PROCEDURE, REGIONS, Laterality
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
    from ..report import Provenance, RegionResult, Report
    from ..vocab import CodedConcept, Region

__all__ = ["SR_SERIES_NUMBER", "render_sr"]

#: TID 1500 row 12 container of document-level evaluations.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: Series number of anaxreport SR series (a new series in the source study).
SR_SERIES_NUMBER = 9901

_WHAT = "DICOM SR"

#: Stand-ins for per-report values in the prototypes; every report replaces them.
_PLACEHOLDER_UID = "2.25.0"
_PLACEHOLDER_BOX = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])

_Item = TypeVar("_Item", bound=Dataset)


def render_sr(report: Report) -> Dataset:
    """The report as a Comprehensive 3D SR (TID 1500) in the source image's study.

    Raises :class:`~anaxreport.errors.ExportError` when the report has no source header, found
    no region, or highdicom refuses the content.
    """
    header = source_header(report, _WHAT)
    with export_errors(report, _WHAT):
        found = [r for r in report.regions if r.found]
        if not found:
            raise ExportError(
                f"cannot write the {_WHAT} for SOP Instance UID "
                f"{report.study.sop_instance_uid}: no region was found, and TID 1500 needs at "
                "least one measurement group"
            )
        source = hd.sr.SourceImageForRegion.from_source_image(header)
        groups = [_region_group(report, r, source) for r in found]
        prototype = _root_prototype(report.provenance, device_uid(report))
        children = list(prototype.ContentSequence)
        measurements = children[-1]  # Imaging Measurements, with a placeholder group
        children[-1] = _copy(measurements, ContentSequence=groups)
        children.append(_evaluations(report))
        # highdicom deep-copies the content and walks it for the images it references (about
        # half a second): give it the root alone, then attach the children. The evidence is the
        # same: every reference in the tree is to the source image, given as evidence.
        sr = hd.sr.Comprehensive3DSR(
            evidence=[header],
            content=_copy(prototype, ContentSequence=[]),
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
        sr.ContentSequence = children
        sr._content = hd.sr.ContentSequence(  # what Comprehensive3DSR.content returns
            [_copy(prototype, ContentSequence=children)], is_root=True
        )
        append_ai_equipment(sr, report)
    return sr


def _copy(item: _Item, **values: Any) -> _Item:
    """A new item like ``item`` with the elements named by keyword in ``values`` set anew.

    Much cheaper than building the item again: the class's constructor (highdicom's checks) does
    not run again, the other elements keep their already converted values (immutable, or copied
    lists), and a sequence gets a new list (a plain pydicom Sequence) holding the same read-only
    items, so that changing the copy never changes ``item``. The new values are converted and
    checked by pydicom as an attribute assignment would.
    """
    elements: dict[Any, DataElement] = {}
    for tag, element in item.items():
        if not isinstance(element, DataElement):  # read from a file, not built: never here
            raise TypeError(f"cannot copy the raw element {tag} of a prototype")
        value = element.value
        if isinstance(value, Sequence):
            value = Sequence(value)
        elif isinstance(value, MutableSequence):
            value = copy.copy(value)
        elements[tag] = DataElement(tag, element.VR, value, already_converted=True)
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"not a DICOM keyword: {keyword}")
        elements[tag] = DataElement(tag, dictionary_VR(tag), value)
    new = type(item).__new__(type(item))
    Dataset.__init__(new, elements)
    return new


def _region_group(
    report: Report, result: RegionResult, source: hd.sr.SourceImageForRegion
) -> hd.sr.ContainerContentItem:
    """TID 1410 for one found region: its box, site, probabilities and Present/Absent calls.

    A copy of the region's prototype with this report's tracking UID, box, probabilities and
    calls; the other items are the prototype's.
    """
    region = result.region
    if result.box is None:
        raise ValueError(f"region {result.name} has no box")
    prototype = _group_prototype(region, report.provenance)
    children = list(prototype.container.ContentSequence)
    uid_item = children[prototype.uid_at]
    children[prototype.uid_at] = _copy(uid_item, UID=tracking_uid(report, region))
    scoord = children[prototype.region_at]
    children[prototype.region_at] = _copy(
        scoord, GraphicData=_graphic_data(result.box.polyline()), ContentSequence=[source]
    )
    for f, at in zip(FINDINGS, prototype.num_at, strict=True):
        children[at] = _num(children[at], float(result.probabilities[f.index]))
    for f, at in zip(FINDINGS, prototype.call_at, strict=True):
        children[at] = _call_item(f.code, report.call(region, f).present)
    return _copy(prototype.container, ContentSequence=children)


def _graphic_data(points: Any) -> list[float]:
    """A polyline as highdicom's ImageRegion stores it: (column, row) pairs, flattened."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] != 2:
        raise ValueError(f"a polyline needs (column, row) pairs, got shape {array.shape}")
    return array.flatten().tolist()


def _num(prototype: hd.sr.NumContentItem, value: float) -> hd.sr.NumContentItem:
    """A copy of a NUM prototype holding ``value`` as highdicom's NumContentItem stores it."""
    measured = _copy(
        prototype.MeasuredValueSequence[0],
        NumericValue=DS(value, auto_format=True),
        FloatingPointValue=value,
    )
    return _copy(prototype, MeasuredValueSequence=[measured])


class _GroupPrototype:
    """A TID 1410 group that highdicom built for a region and a model with placeholder values,
    and where in its content the per-report items are."""

    def __init__(self, region: Region, provenance: Provenance) -> None:
        tracking = hd.sr.TrackingIdentifier(uid=_PLACEHOLDER_UID, identifier=region.name)
        image_region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_PLACEHOLDER_BOX,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=ComputedRadiographyImageStorage,
                referenced_sop_instance_uid=_PLACEHOLDER_UID,
            ),
        )
        measurements = [
            hd.sr.Measurement(name=coded(f.code), value=0.0, unit=codes.UCUM.NoUnits)
            for f in FINDINGS
        ]
        evaluations = [_qualitative_evaluation(f.code, False) for f in FINDINGS]
        self.group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=image_region,
            algorithm_id=_algorithm(provenance),
            finding_sites=[_finding_site(region)],
            geometric_purpose=coded(BOUNDED_BY),
            measurements=measurements,
            qualitative_evaluations=evaluations,
        )
        self.container: hd.sr.ContainerContentItem = self.group[0]
        children = self.container.ContentSequence
        ids = [id(item) for item in children]
        self.uid_at = ids.index(id(tracking[1]))
        self.region_at = ids.index(id(image_region))
        self.num_at = tuple(ids.index(id(m[0])) for m in measurements)
        self.call_at = tuple(ids.index(id(e[0])) for e in evaluations)


@lru_cache(maxsize=256)
def _group_prototype(region: Region, provenance: Provenance) -> _GroupPrototype:
    return _GroupPrototype(region, provenance)


@lru_cache(maxsize=16)
def _root_prototype(provenance: Provenance, device: str) -> hd.sr.ContainerContentItem:
    """The TID 1500 root that highdicom built for a model (whose device UID is ``device``),
    with one placeholder group."""
    content = hd.sr.MeasurementReport(
        observation_context=_observation_context(provenance, device),
        procedure_reported=coded(PROCEDURE),
        imaging_measurements=[_group_prototype(REGIONS[0], provenance).group],
    )
    root: hd.sr.ContainerContentItem = content[0]
    if root.ContentSequence[-1].name != codes.DCM.ImagingMeasurements:  # render_sr relies on it
        raise RuntimeError("highdicom no longer puts Imaging Measurements last in TID 1500")
    return root


def _observation_context(p: Provenance, device_uid: str) -> hd.sr.ObservationContext:
    """The algorithm as the observing device (TID 1002/1004), with the same device UID as the
    Contributing Equipment item."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid,
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


def _algorithm(p: Provenance) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=p.model_name,
        version=p.model_version,
        parameters=[f"weights sha256 {p.weights_sha256}"],
        manufacturer=MANUFACTURER,
    )


def _finding_site(region: Region) -> hd.sr.FindingSite:
    side = region.laterality
    return hd.sr.FindingSite(
        anatomic_location=coded(region.site),
        laterality=None if side is Laterality.UNPAIRED else coded(side.value),
        topographical_modifier=None if region.modifier is None else coded(region.modifier),
    )


def _qualitative_evaluation(finding: CodedConcept, present: bool) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(
        name=coded(finding), value=coded(PRESENT if present else ABSENT)
    )


@lru_cache(maxsize=64)
def _call_item(finding: CodedConcept, present: bool) -> hd.sr.CodeContentItem:
    """The CODE item of a region call: Present or Absent (shared, read-only)."""
    item: hd.sr.CodeContentItem = _qualitative_evaluation(finding, present)[0]
    return item


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
