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
highdicom builds each measurement group once per region and model, the content root once per
model and the document around it once per model and kind of source (SOP class, character set),
with placeholder values (*prototypes*, cached); a report's document is made of copies of them
holding its own values (identity, UIDs, box, probabilities, source image) and of the prototype
items that every report shares (finding site, algorithm, calls, concept names). The prototypes
are read-only (:func:`~anaxreport.render.shared.read_only`: changing one raises ``TypeError``),
so one report's document can never change another's, and the encoder writes each shared item's
bytes once. A copy behaves as an item of its own (its elements and sequences can change, not
the shared items in them), but shares the prototype's elements until they are reached, and the
measurement groups are made only when reached (:class:`~anaxreport.render.shared.DeferredCopy`):
written straight to DICOM (node, batch), a document's groups are written from each group
prototype's compiled bytes (:class:`_GroupTemplate`) and the report's values, without making
a copy or a value object (2.8x faster than encoding copies). The output is the same as
highdicom's, element for element, and the same bytes. Where only the file is wanted,
:func:`write_sr` writes it without making the data set at all: the document prototype's kept
bytes with the report's values in their places (:func:`~.encode.encode_document`), each group
from a frame of its prototype's bytes cut around its values' bytes.
"""

from __future__ import annotations

import copy
import datetime
import logging
import struct
from collections.abc import Callable, MutableSequence
from contextlib import suppress
from functools import cache, lru_cache, partial
from typing import TYPE_CHECKING, Any, TypeVar

import highdicom as hd
import numpy as np
from highdicom.sr.content import (  # private: highdicom's own check, as from_source_image
    _check_valid_source_image_dataset,
)
from highdicom.valuerep import (  # private: highdicom's own checks, as its constructors run them
    _check_long_string,
    _check_short_string,
    _check_short_text,
)
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ComputedRadiographyImageStorage
from pydicom.valuerep import DA, DS, DT, TM, format_number_as_ds

from ..errors import ExportError
from ..vocab import ABSENT, BOUNDED_BY, FINDINGS, PRESENT, PROCEDURE, REGIONS, Laterality
from ._dicom import (
    IDENTITY_TAGS,
    MANUFACTURER,
    PLACEHOLDER_UID,
    TYPE2_IDENTITY,
    ai_equipment_prototype,
    check_identity,
    coded,
    coding_schemes,
    device_uid,
    export_errors,
    header_value,
    new_dataset,
    not_for_diagnosis,
    our_uid,
    software_versions,
    source_header,
    tag_of,
    uid_of,
)
from .encode import (
    BoundedCache,
    ItemTemplate,
    encode,
    encode_copy,
    encode_document,
    encode_item,
    joined,
)
from .shared import (
    DeferredCopy,
    LazyCopy,
    copy_value,
    editable_copy,
    lazy_sequence,
    read_only,
    sequence_entries,
)
from .uids import result_uid, series_uid, tracking_uid

if TYPE_CHECKING:
    from ..report import Provenance, RegionResult, Report
    from ..vocab import CodedConcept, Region

__all__ = ["SR_SERIES_NUMBER", "render_sr", "write_sr"]

_log = logging.getLogger(__name__)

_PATIENT_AND_STUDY_TAGS: dict[str, tuple[BaseTag, ...]] = {}

#: TID 1500 row 12 container of document-level evaluations.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: Series number of anaxreport SR series (a new series in the source study).
SR_SERIES_NUMBER = 9901

_WHAT = "DICOM SR"

#: Stands in for each report's box in the prototypes (as _dicom.PLACEHOLDER_UID for UIDs).
_PLACEHOLDER_BOX = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])

_Item = TypeVar("_Item", bound=Dataset)

_MEASURED_VALUE_SEQUENCE = Tag("MeasuredValueSequence")
_NUMERIC_VALUE = Tag("NumericValue")
_FLOATING_POINT_VALUE = Tag("FloatingPointValue")
_CONTRIBUTION_DATE_TIME = Tag("ContributionDateTime")
_CONTRIBUTING_EQUIPMENT = Tag("ContributingEquipmentSequence")
_EVIDENCE = Tag("CurrentRequestedProcedureEvidenceSequence")
_SERIES_INSTANCE_UID = Tag("SeriesInstanceUID")
_SOP_INSTANCE_UID = Tag("SOPInstanceUID")
_INSTANCE_CREATION_DATE = Tag("InstanceCreationDate")
_INSTANCE_CREATION_TIME = Tag("InstanceCreationTime")
_CONTENT_DATE = Tag("ContentDate")
_CONTENT_TIME = Tag("ContentTime")
_GROUP_LENGTH = Tag("FileMetaInformationGroupLength")
_INSTANCE_UID = Tag("MediaStorageSOPInstanceUID")
_CONTENT_SEQUENCE = Tag("ContentSequence")
_GRAPHIC_DATA = Tag("GraphicData")
_UID = Tag("UID")
_TEXT_VALUE = Tag("TextValue")
_TYPE2_TAGS = tuple((keyword, Tag(keyword)) for keyword in TYPE2_IDENTITY)
_DOUBLE = struct.Struct("<d").pack  # FloatingPointValue (FD)


def render_sr(report: Report) -> Dataset:
    """The report as a Comprehensive 3D SR (TID 1500) in the source image's study.

    Raises :class:`~anaxreport.errors.ExportError` when the report has no source header, found
    no region, or highdicom refuses the content.
    """
    header = _shallow_header(report)
    with export_errors(report, _WHAT):
        found = [r for r in report.regions if r.found]
        if not found:
            raise ExportError(
                f"cannot write the {_WHAT} for SOP Instance UID "
                f"{report.study.sop_instance_uid}: no region was found, and TID 1500 needs at "
                "least one measurement group"
            )
        source = _source_image(header)
        source_bytes = cache(partial(encode_item, source))  # the same in every group
        groups = [_region_group(report, r, source, source_bytes) for r in found]
        prototype = _root_prototype(report.provenance, device_uid(report))
        children = list(prototype.ContentSequence)
        measurements = children[-1]  # Imaging Measurements, with a placeholder group
        children[-1] = _copy(measurements, ContentSequence=tuple(groups))
        children.append(_evaluations(report))
        sr = _document(report, header, _copy(prototype, ContentSequence=Sequence()))
        lazy_sequence(sr, _CONTENT_SEQUENCE, tuple(children))
        sr._content = hd.sr.ContentSequence(  # what Comprehensive3DSR.content returns
            [_copy(prototype, ContentSequence=Sequence(children))], is_root=True
        )
        # as append_ai_equipment: the algorithm's item after highdicom's (shared, read-only)
        algorithm = ai_equipment_prototype(report.provenance)
        items = sequence_entries(sr, _CONTRIBUTING_EQUIPMENT)
        lazy_sequence(sr, _CONTRIBUTING_EQUIPMENT, (*items, algorithm))
    return sr


def write_sr(report: Report) -> bytes:
    """``encode(render_sr(report))``, the SR's file, written without making the data set: the
    document prototype's kept bytes with the report's values in their places, and the groups
    and other items from their prototypes' compiled bytes (what the CLI, the batch CLI and the
    node write: about half the time of making the data set and encoding it). A report or source
    this does not cover goes that long way, which gives the same bytes or the same error."""
    try:
        return _written(report)
    except Exception as exc:  # the long way decides: the same bytes, or its error
        _log.debug("the SR file is written from its data set: %r", exc)
    return encode(render_sr(report))


def _written(report: Report) -> bytes:
    """:func:`write_sr`'s file; raises where :func:`render_sr` might do otherwise than copy the
    prototypes (it raises, or its document goes to highdicom)."""
    header = _shallow_header(report)
    found = [r for r in report.regions if r.found]
    if not found:
        raise ValueError("no region was found")
    source = cache(partial(encode_copy, _source_copy(header)))
    provenance, device = report.provenance, device_uid(report)
    groups = [
        partial(_region_group_bytes, report, r, source, _group_prototype(r.region, provenance))
        for r in found
    ]
    *children, _ = _root_prototype(provenance, device).ContentSequence
    measurements = DeferredCopy(_unmade, partial(_measurements_bytes, provenance, device, groups))
    prototype, copied = _prototype_for(report, header)
    values = _document_values(report, header, prototype)
    for tag in copied:
        if tag in header._dict:
            values[tag] = copy_value(prototype, header[tag])
    values[_CONTENT_SEQUENCE] = (*children, measurements, _evaluations_copy(report))
    algorithm = ai_equipment_prototype(provenance)
    values[_CONTRIBUTING_EQUIPMENT] = (*values[_CONTRIBUTING_EQUIPMENT], algorithm)
    return encode_document(LazyCopy(prototype, values), prototype.file_meta)


def _unmade() -> Dataset:
    raise TypeError("write_sr's items are written, never made")


def _measurements_bytes(
    provenance: Provenance, device: str, groups: list[Callable[[str], bytes]], codec: str
) -> bytes:
    """The Imaging Measurements container holding the groups written by ``groups``."""
    template = _measurements_template(provenance, device, codec)
    return template.item_of(b"".join([group(codec) for group in groups]))


@lru_cache(maxsize=64)
def _measurements_template(provenance: Provenance, device: str, codec: str) -> ItemTemplate:
    measurements = _root_prototype(provenance, device).ContentSequence[-1]
    return ItemTemplate(measurements, (_CONTENT_SEQUENCE,), codec)


def _document(
    report: Report, header: Dataset, content: hd.sr.ContainerContentItem
) -> hd.sr.Comprehensive3DSR:
    """What highdicom's Comprehensive3DSR makes of the header and the content root ``content``
    (without its children: highdicom deep-copies the content and walks it for the images it
    references, half a second; every reference in the tree is to the source image, given as
    evidence anyway).

    That constructor takes longer than all the rest of the SR (it looks the source's SOP class
    up in the standard's module tables several times), so highdicom makes the document once per
    model and kind of source (:func:`_document_prototype`), and a report's is a copy of that
    holding the report's values, set as the constructor sets them. A header that highdicom
    would warn about or refuse, or anything else the copy does not reproduce, goes to highdicom.
    """
    try:
        return _document_from_prototype(report, header, content)
    except Exception as exc:  # highdicom decides: the same document, or its error
        _log.debug("the SR document goes to highdicom: %r", exc)
    return _document_by_highdicom(report, source_header(report, _WHAT), content)


def _shallow_header(report: Report) -> Dataset:
    """``source_header``'s header (with empty type 2 identity attributes where absent) without
    deep-copying every element: a shallow copy with its own element dict, so that reading a
    raw element converts it there, not in the report's header. The document gets copies of
    the elements it takes from it (:func:`_document_from_prototype`)."""
    if report.header is None:
        return source_header(report, _WHAT)  # raises its ExportError
    header = copy.copy(report.header)
    elements = dict(report.header._dict)
    object.__setattr__(header, "_dict", elements)
    for keyword, tag in _TYPE2_TAGS:
        if tag not in elements or header[tag].value is None:
            setattr(header, keyword, "")
    return header


def _document_by_highdicom(
    report: Report, header: Dataset, content: hd.sr.ContainerContentItem
) -> hd.sr.Comprehensive3DSR:
    return hd.sr.Comprehensive3DSR(
        evidence=[header],
        content=content,
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


def _document_from_prototype(
    report: Report, header: Dataset, content: hd.sr.ContainerContentItem
) -> hd.sr.Comprehensive3DSR:
    """:func:`_document_by_highdicom`'s document, made from a copy of the prototype: the steps
    of highdicom's SOPClass and _SR constructors that depend on the header or the report.

    The copy shares the prototype's elements until they are reached (:func:`editable_copy`),
    and its own values are set as pydicom converts them, so that no element of it is made or
    checked twice: the constructor's checks of the header run here, as it runs them."""
    prototype, copied = _prototype_for(report, header)
    values = _document_values(report, header, prototype)
    values.update((tag, element.value) for tag, element in content.items())
    sr = editable_copy(prototype, values)
    sr.file_meta = _file_meta(prototype.file_meta, sr.SOPInstanceUID)
    # SOPClass.copy_patient_and_study_information, with copies of the report's header elements
    original = report.header._dict if report.header is not None else {}
    elements = sr._dict
    for tag in copied:
        if tag in header._dict:
            element = header[tag]
            mutable = isinstance(element.value, MutableSequence)
            if element is original.get(tag):
                element = copy.deepcopy(element) if mutable else copy.copy(element)
            if element.VR == "SQ":
                sr[tag] = element  # as Dataset sets a sequence
            else:
                dict.__setitem__(elements, tag, element)
    return sr


def _prototype_for(
    report: Report, header: Dataset
) -> tuple[hd.sr.Comprehensive3DSR, tuple[BaseTag, ...]]:
    """The document prototype for this report's model and source, and the source's tags that
    highdicom's SOPClass.copy_patient_and_study_information copies over it; raises where those
    would not overwrite every identity attribute it sets (highdicom's own values would stay)."""
    charset = header_value(header, "SpecificCharacterSet")
    sop_class = header_value(header, "SOPClassUID")
    prototype = _document_prototype(
        report.provenance,
        device_uid(report),
        sop_class,
        tuple(charset) if isinstance(charset, MultiValue) else charset,
        not_for_diagnosis(report),
        tuple(software_versions(report)),
    )
    copied = _patient_and_study_tags(prototype, sop_class)
    if not IDENTITY_TAGS.issubset(copied):
        raise ValueError(f"the IOD of {sop_class} lacks patient or study attributes")
    return prototype, copied


def _document_values(
    report: Report, header: Dataset, prototype: hd.sr.Comprehensive3DSR
) -> dict[BaseTag, Any]:
    """The values a report's document holds in place of the prototype's, as the SOPClass and
    _SR constructors set them (not the content root's, nor the copied header elements): its
    UIDs and times, the evidence and the contributing equipment before the algorithm's. Runs
    the constructors' checks of the header, as they run them."""
    check_identity(header)
    now = datetime.datetime.now()
    values: dict[BaseTag, Any] = {
        _SERIES_INSTANCE_UID: our_uid(series_uid(report, "sr")),
        _SOP_INSTANCE_UID: our_uid(result_uid(report, "sr")),
        _INSTANCE_CREATION_DATE: DA(now.date()),
        _INSTANCE_CREATION_TIME: TM(now.time()),
        _CONTENT_DATE: DA(now.date()),
        _CONTENT_TIME: TM(now.time()),
        _EVIDENCE: (_evidence(header),),
    }
    equipment: list[Dataset] = []
    if len(prototype.ContributingEquipmentSequence) > 1:  # the source's SOP class: an image's
        with suppress(Exception):  # as highdicom: no item for a source without equipment data
            equipment.append(_acquisition_equipment(header))
    when = DataElement(_CONTRIBUTION_DATE_TIME, "DT", DT(datetime.datetime.now())).value
    equipment.append(_copy(_highdicom_equipment(), ContributionDateTime=when))
    values[_CONTRIBUTING_EQUIPMENT] = tuple(equipment)
    return values


def _evidence(image: Dataset) -> LazyCopy:
    """What highdicom's ``collect_evidence([image], content)`` makes for a content root that
    references nothing (its children come later): the image's study, series and instance,
    as copies of a prototype made once."""
    study, series, instance = _evidence_prototypes()
    reference = {
        tag_of("ReferencedSOPClassUID"): uid_of(header_value(image, "SOPClassUID")),
        tag_of("ReferencedSOPInstanceUID"): uid_of(header_value(image, "SOPInstanceUID")),
    }
    in_series = {
        tag_of("SeriesInstanceUID"): uid_of(header_value(image, "SeriesInstanceUID")),
        tag_of("ReferencedSOPSequence"): (LazyCopy(instance, reference),),
    }
    in_study = {
        tag_of("StudyInstanceUID"): uid_of(header_value(image, "StudyInstanceUID")),
        tag_of("ReferencedSeriesSequence"): (LazyCopy(series, in_series),),
    }
    return LazyCopy(study, in_study)


@lru_cache(maxsize=1)
def _evidence_prototypes() -> tuple[Dataset, Dataset, Dataset]:
    """The evidence items (study, series, instance) with placeholder UIDs, read-only."""
    instance = new_dataset(Dataset, {})
    instance.ReferencedSOPClassUID = ComputedRadiographyImageStorage
    instance.ReferencedSOPInstanceUID = PLACEHOLDER_UID
    series = new_dataset(Dataset, {})
    series.SeriesInstanceUID = PLACEHOLDER_UID
    series.ReferencedSOPSequence = [instance]
    study = new_dataset(Dataset, {})
    study.StudyInstanceUID = PLACEHOLDER_UID
    study.ReferencedSeriesSequence = [series]
    read_only(study)
    return study, study.ReferencedSeriesSequence[0], series.ReferencedSOPSequence[0]


def _source_image(header: Dataset) -> hd.sr.SourceImageForRegion:
    """``hd.sr.SourceImageForRegion.from_source_image(header)``: highdicom's check of the
    source, then a copy of the item its constructor made once, with the source's UIDs."""
    return _source_copy(header).make()


def _source_copy(header: Dataset) -> LazyCopy:
    """:func:`_source_image`'s item, made when reached."""
    _check_valid_source_image_dataset(header)
    prototype = _source_prototype()
    (reference,) = prototype.ReferencedSOPSequence
    uids = {
        tag_of("ReferencedSOPClassUID"): uid_of(header_value(header, "SOPClassUID")),
        tag_of("ReferencedSOPInstanceUID"): uid_of(header_value(header, "SOPInstanceUID")),
    }
    return LazyCopy(prototype, {tag_of("ReferencedSOPSequence"): (LazyCopy(reference, uids),)})


@lru_cache(maxsize=1)
def _source_prototype() -> hd.sr.SourceImageForRegion:
    item = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=ComputedRadiographyImageStorage,
        referenced_sop_instance_uid=PLACEHOLDER_UID,
    )
    return read_only(item)


def _patient_and_study_tags(
    prototype: hd.sr.Comprehensive3DSR, sop_class_uid: str
) -> tuple[BaseTag, ...]:
    """The tags that highdicom's SOPClass.copy_patient_and_study_information copies from a
    source of this SOP class where it has them, in its order (the root attributes of the
    Patient and Study modules of its IOD): asked of a stand-in source that has none of them,
    once, since looking them up for each document costs more than making the rest of it."""
    tags = _PATIENT_AND_STUDY_TAGS.get(sop_class_uid)
    if tags is None:
        stand_in = _AskedTags()
        stand_in.SOPClassUID = sop_class_uid
        stand_in.SOPInstanceUID = PLACEHOLDER_UID
        prototype.copy_patient_and_study_information(stand_in)  # read-only: adding would raise
        tags = _PATIENT_AND_STUDY_TAGS[sop_class_uid] = tuple(stand_in.__dict__["asked"])
    return tags


class _AskedTags(Dataset):
    """A source that has only its SOP Class and Instance UIDs, and notes what it is asked."""

    def __getitem__(self, key: Any) -> Any:
        tag = Tag(key)
        if tag in self._dict:
            return super().__getitem__(tag)
        self.__dict__.setdefault("asked", []).append(tag)
        raise KeyError(key)


@lru_cache(maxsize=1)
def _acquisition_purpose() -> hd.sr.CodedConcept:
    """The acquisition item's purpose as highdicom codes it (shared, read-only)."""
    return read_only(hd.sr.CodedConcept.from_code(codes.DCM.AcquisitionEquipment))


@lru_cache(maxsize=1)
def _highdicom_equipment() -> hd.ContributingEquipment:
    """highdicom's ContributingEquipment.for_highdicom(), whose time each document replaces."""
    return read_only(hd.ContributingEquipment.for_highdicom())


@lru_cache(maxsize=32)
def _document_prototype(
    provenance: Provenance,
    device: str,
    sop_class_uid: str,
    charset: str | tuple[str, ...] | None,
    series_description: str,
    versions: tuple[str, ...],
) -> hd.sr.Comprehensive3DSR:
    """highdicom's document for a model and a kind of source (SOP class, character set), made
    from a stand-in header that holds only what every header holds after ``source_header``
    (read-only; each report's copy replaces all that came from the stand-in)."""
    stand_in = Dataset()
    stand_in.SOPClassUID = sop_class_uid
    stand_in.SOPInstanceUID = PLACEHOLDER_UID
    stand_in.SeriesInstanceUID = PLACEHOLDER_UID
    stand_in.StudyInstanceUID = PLACEHOLDER_UID
    stand_in.Manufacturer = MANUFACTURER  # an image's SOP class gets an acquisition item
    if charset is not None:
        stand_in.SpecificCharacterSet = list(charset) if isinstance(charset, tuple) else charset
    for keyword in TYPE2_IDENTITY:
        setattr(stand_in, keyword, "")
    sr = hd.sr.Comprehensive3DSR(
        evidence=[stand_in],
        content=_copy(_root_prototype(provenance, device), ContentSequence=Sequence()),
        series_instance_uid=PLACEHOLDER_UID,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=PLACEHOLDER_UID,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description,
        manufacturer_model_name=provenance.model_name[:64],
        software_versions=list(versions),
        coding_schemes=coding_schemes(),
    )
    return read_only(sr)


def _file_meta(prototype: FileMetaDataset, sop_instance_uid: str) -> FileMetaDataset:
    """The File Meta Information that highdicom's SOPClass makes: the prototype's, for another
    SOP Instance UID. Its group length (highdicom's: the whole group's encoded length) changes
    with the UID's length padded to even."""
    meta = FileMetaDataset({tag: copy.copy(e) for tag, e in prototype._dict.items()})
    old, new = len(prototype.MediaStorageSOPInstanceUID), len(sop_instance_uid)
    length = prototype.FileMetaInformationGroupLength + (new + new % 2) - (old + old % 2)
    meta[_GROUP_LENGTH] = DataElement(_GROUP_LENGTH, "UL", length, already_converted=True)
    uid = DataElement(_INSTANCE_UID, "UI", UID(sop_instance_uid), already_converted=True)
    meta[_INSTANCE_UID] = uid
    return meta


#: The source's attributes highdicom's ContributingEquipment.for_image_acquisition takes, in
#: the constructor's order, and how it checks each (after Manufacturer, which it needs).
_ACQUISITION = (
    ("ManufacturerModelName", "manufacturer_model_name", _check_long_string),
    ("InstitutionName", "institution_name", _check_long_string),
    ("InstitutionalDepartmentName", "institutional_department_name", _check_long_string),
    ("InstitutionAddress", "institution_address", _check_short_text),
    ("StationName", "station_name", _check_short_string),
    ("DeviceSerialNumber", "device_serial_number", _check_long_string),
    ("SoftwareVersions", "software_versions", _check_long_string),
)
_ACQUISITION_DESCRIPTION = "Acquisition equipment of the source image(s)"


def _acquisition_equipment(source: Dataset) -> Dataset:
    """highdicom's ContributingEquipment.for_image_acquisition for a source known to be an
    image: a copy of what its constructor made for a source with the same attributes (made
    once, :func:`_acquisition_prototype`), holding this source's values after the same checks.
    """
    manufacturer = header_value(source, "Manufacturer")
    if manufacturer is None or manufacturer == "":
        raise AttributeError("Dataset has no manufacturer information.")
    when = header_value(source, "AcquisitionDateTime")
    if when is None:
        date = header_value(source, "AcquisitionDate")
        time = header_value(source, "AcquisitionTime")
        if isinstance(date, datetime.date) and isinstance(time, datetime.time):
            when = datetime.datetime.combine(date, time)
    _check_long_string(manufacturer)
    values: dict[BaseTag, Any] = {tag_of("Manufacturer"): manufacturer}
    shape = []
    for keyword, _, check in _ACQUISITION:
        value = header_value(source, keyword)
        if value is None:
            shape.append(None)
            continue
        several = keyword == "SoftwareVersions" and not isinstance(value, str)  # as highdicom
        if several:
            value = list(value)
            if not value:
                raise ValueError("Argument 'software_versions' must not be empty.")
        for text in value if several else [value]:
            check(text)
        shape.append(several)
        values[tag_of(keyword)] = MultiValue(str, value) if several else value
    if when is not None:
        values[_CONTRIBUTION_DATE_TIME] = DT(when)
    return editable_copy(_acquisition_prototype(tuple(shape), when is not None), values)


@lru_cache(maxsize=64)
def _acquisition_prototype(shape: tuple[bool | None, ...], timed: bool) -> Dataset:
    """What highdicom's constructor makes of a source with these attributes (None: absent,
    True: several values, False: one) and with or without an acquisition time (read-only)."""
    equipment = hd.ContributingEquipment(
        manufacturer="x",
        purpose_of_reference=_acquisition_purpose(),
        contribution_datetime=datetime.datetime(2000, 1, 1) if timed else None,
        contribution_description=_ACQUISITION_DESCRIPTION,
        **{
            argument: None if several is None else ["x", "y"] if several else "x"
            for (_, argument, _), several in zip(_ACQUISITION, shape, strict=True)
        },
    )
    return read_only(equipment)


def _copy(item: _Item, **values: Any) -> _Item:
    """An editable copy of the read-only prototype ``item`` (:func:`editable_copy`) with the
    elements named by keyword in ``values`` set anew; each value must be what pydicom makes of
    it (a UID, not a str...), or a tuple of items and LazyCopy for a sequence made when reached.
    """
    return editable_copy(item, {tag_of(keyword): value for keyword, value in values.items()})


def _region_group(
    report: Report,
    result: RegionResult,
    source: hd.sr.SourceImageForRegion,
    source_bytes: Callable[[str], bytes],
) -> DeferredCopy:
    """TID 1410 for one found region: its box, site, probabilities and Present/Absent calls.

    A copy of the region's prototype with this report's tracking UID, box, probabilities and
    calls; the other items are the prototype's. Made only when reached (:class:`DeferredCopy`):
    the encoder writes it from the prototype's compiled bytes (:class:`_GroupTemplate`) and the
    report's values, without making a copy or a value object of it.
    """
    if result.box is None:
        raise ValueError(f"region {result.name} has no box")
    prototype = _group_prototype(result.region, report.provenance)
    return DeferredCopy(
        lambda: _region_group_copy(report, result, source, prototype).make(),
        partial(_region_group_bytes, report, result, source_bytes, prototype),
    )


def _region_group_bytes(
    report: Report,
    result: RegionResult,
    source_bytes: Callable[[str], bytes],
    prototype: _GroupPrototype,
    codec: str,
) -> bytes:
    """The bytes of :func:`_region_group_copy`'s item."""
    region = result.region
    points = result.box.polyline()  # type: ignore[union-attr]
    return prototype.template(codec).item(
        tracking_uid(report, region),
        [float(v) for point in points for v in point],  # the floats of _graphic_data
        source_bytes(codec),
        result.probabilities,  # in vocab order, as FINDINGS
        [call.present for call in report.region_calls(region)],
    )


def _region_group_copy(
    report: Report,
    result: RegionResult,
    source: hd.sr.SourceImageForRegion,
    prototype: _GroupPrototype,
) -> LazyCopy:
    """The group's copy of its prototype, made when the group is reached."""
    region = result.region
    children: list[Dataset | LazyCopy] = list(prototype.children)
    uid_item = children[prototype.uid_at]
    children[prototype.uid_at] = LazyCopy(uid_item, {_UID: our_uid(tracking_uid(report, region))})
    scoord = children[prototype.region_at]
    graphic_data = _graphic_data(result.box.polyline())
    children[prototype.region_at] = LazyCopy(
        scoord, {_GRAPHIC_DATA: graphic_data, _CONTENT_SEQUENCE: (source,)}
    )
    for f, (at, num, measured) in zip(FINDINGS, prototype.nums, strict=True):
        children[at] = _num(num, measured, float(result.probabilities[f.index]))
    for call, (at, absent, present) in zip(
        report.region_calls(region), prototype.calls, strict=True
    ):
        children[at] = present if call.present else absent
    return LazyCopy(prototype.container, {_CONTENT_SEQUENCE: tuple(children)})


def _graphic_data(points: Any) -> MultiValue[float]:
    """A polyline as highdicom's ImageRegion stores it: (column, row) pairs, flattened (FL,
    several values: pydicom makes a MultiValue of floats of it)."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] != 2:
        raise ValueError(f"a polyline needs (column, row) pairs, got shape {array.shape}")
    return MultiValue(float, array.flatten().tolist())


def _num(num: hd.sr.NumContentItem, measured: Dataset, value: float) -> LazyCopy:
    """A copy of a NUM prototype (and of its measured value item) holding ``value`` as
    highdicom's NumContentItem stores it, converted as pydicom would convert it."""
    values = {_NUMERIC_VALUE: DS(value, auto_format=True), _FLOATING_POINT_VALUE: value}
    return LazyCopy(num, {_MEASURED_VALUE_SEQUENCE: (LazyCopy(measured, values),)})


class _GroupPrototype:
    """A TID 1410 group that highdicom built for a region and a model with placeholder values,
    and where in its content the per-report items are."""

    def __init__(self, region: Region, provenance: Provenance) -> None:
        tracking = hd.sr.TrackingIdentifier(uid=PLACEHOLDER_UID, identifier=region.name)
        image_region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_PLACEHOLDER_BOX,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=ComputedRadiographyImageStorage,
                referenced_sop_instance_uid=PLACEHOLDER_UID,
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
        self.container: hd.sr.ContainerContentItem = read_only(self.group[0])
        self.children = tuple(self.container.ContentSequence)
        ids = [id(item) for item in self.children]
        self.uid_at = ids.index(id(tracking[1]))
        self.region_at = ids.index(id(image_region))
        self.nums = tuple(
            (at, self.children[at], self.children[at].MeasuredValueSequence[0])
            for at in (ids.index(id(m[0])) for m in measurements)
        )
        self.calls = tuple(  # where each call goes, and its two items
            (ids.index(id(e[0])), _call_item(f.code, False), _call_item(f.code, True))
            for f, e in zip(FINDINGS, evaluations, strict=True)
        )
        self._templates: dict[str, _GroupTemplate] = {}

    def template(self, codec: str) -> _GroupTemplate:
        template = self._templates.get(codec)
        if template is None:
            template = self._templates[codec] = _GroupTemplate(self, codec)
        return template


class _GroupTemplate:
    """A group prototype compiled to bytes for one codec: the bytes of every item the reports
    share, and a template (:class:`~.encode.ItemTemplate`) for every item that holds a report's
    value; and from these, *frames*: the whole group cut around its values' bytes (its tracking
    UID, source image, box and each probability's two encodings), one per combination of those
    values' lengths and of the calls (whose items differ in length). A group is then its values'
    bytes joined with its frame's pieces: a tenth of the time of making its copy and encoding
    it."""

    def __init__(self, prototype: _GroupPrototype, codec: str) -> None:
        self.children = [encode_item(child, codec) for child in prototype.children]
        self.container = ItemTemplate(prototype.container, (_CONTENT_SEQUENCE,), codec)
        self.uid_at, self.region_at = prototype.uid_at, prototype.region_at
        self.uid = ItemTemplate(prototype.children[self.uid_at], (_UID,), codec)
        scoord = prototype.children[self.region_at]
        self.region = ItemTemplate(scoord, (_CONTENT_SEQUENCE, _GRAPHIC_DATA), codec)
        self.nums = [
            (at, _NumTemplate(num, measured, codec)) for at, num, measured in prototype.nums
        ]
        self.calls = [
            (at, encode_item(absent, codec), encode_item(present, codec))
            for at, absent, present in prototype.calls
        ]
        # the values' bytes in the group's order: item_of's values are in the order of their
        # tags (ContentSequence (0040,A730) before GraphicData (0070,0022); FloatingPointValue
        # (0040,A161) before NumericValue (0040,A30A)) and the items in the prototype's
        firsts = {self.uid_at: [0], self.region_at: [1, 2]}
        firsts.update((at, [3 + 2 * k, 4 + 2 * k]) for k, (at, _) in enumerate(self.nums))
        self._order = [index for at in sorted(firsts) for index in firsts[at]]
        self._in_order = self._order == sorted(self._order)
        # one frame per combination of lengths and calls
        self._frames: BoundedCache[tuple[int | bool, ...], list[bytes]] = BoundedCache(512)

    def item(
        self,
        uid: str,
        graphic_data: list[float],
        source: bytes,
        probabilities: list[float],
        calls: list[bool],
    ) -> bytes:
        values = list(map(float, probabilities))
        texts = _decimal_strings(values)
        numerics = [(t + " " if len(t) % 2 else t).encode() for t in texts]  # DS: ASCII
        (uid_data,) = self.uid.values_of(uid)
        source_data, graphic = self.region.values_of(source, graphic_data)
        data = [uid_data, source_data, graphic]
        for double, numeric in zip(map(_DOUBLE, values), numerics, strict=True):
            data += (double, numeric)
        key = (len(uid_data), len(source_data), len(graphic), *map(len, numerics), *calls)
        frame = self._frames.get(
            key, lambda: self._frame((uid, graphic_data, source, values, texts, calls), data)
        )
        return joined(frame, data if self._in_order else [data[i] for i in self._order])

    def _frame(self, given: tuple[Any, ...], data: list[bytes]) -> list[bytes]:
        """The group of these values cut around their bytes (``data``, as :meth:`item` orders
        them), from its items' frames (:meth:`ItemTemplate.frame`, which checks the bytes)."""
        uid, graphic_data, source, values, texts, calls = given
        variable: dict[int, list[bytes | int]] = {
            self.uid_at: _cut(self.uid.frame((uid, data[0])), [0]),
            self.region_at: _cut(
                self.region.frame((source, data[1]), (graphic_data, data[2])), [1, 2]
            ),
        }
        for k, (at, num) in enumerate(self.nums):
            pieces = num.frame(values[k], texts[k], data[4 + 2 * k])
            variable[at] = _cut(list(pieces), [3 + 2 * k, 4 + 2 * k])
        for (at, absent, present), call in zip(self.calls, calls, strict=True):
            variable[at] = [present if call else absent]
        children = [
            segment
            for at, child in enumerate(self.children)
            for segment in variable.get(at, [child])
        ]
        body = b"".join(data[s] if type(s) is int else s for s in children)  # type: ignore[misc]
        head, tail = self.container.frame((body, body))
        pieces = [head]
        for segment in [*children, tail]:
            if type(segment) is int:
                pieces.append(b"")
            else:
                pieces[-1] += segment  # type: ignore[operator]
        return pieces


def _cut(pieces: list[bytes], indices: list[int]) -> list[bytes | int]:
    """An item's frame with the indices of its values' bytes between its pieces."""
    cut: list[bytes | int] = [pieces[0]]
    for index, piece in zip(indices, pieces[1:], strict=True):
        cut += (index, piece)
    return cut


class _NumTemplate:
    """A NUM item (with its measured value item) compiled for one codec, cut around its value's
    two encodings, FloatingPointValue (8 bytes) and NumericValue (its decimal string, the one
    part whose length varies between reports, and every enclosing length with it): one frame
    per length, from which :class:`_GroupTemplate` makes its own."""

    def __init__(self, num: Dataset, measured: Dataset, codec: str) -> None:
        self.num = ItemTemplate(num, (_MEASURED_VALUE_SEQUENCE,), codec)
        self.measured = ItemTemplate(measured, (_FLOATING_POINT_VALUE, _NUMERIC_VALUE), codec)
        self.frames: dict[int, tuple[bytes, bytes, bytes]] = {}

    def frame(self, value: float, text: str, numeric: bytes) -> tuple[bytes, bytes, bytes]:
        """The NUM cut around its value's two encodings, for this length of its DS text."""
        frame = self.frames.get(len(numeric))
        if frame is None:
            frame = self.frames[len(numeric)] = self._frame(value, text, numeric)
        return frame

    def _frame(self, value: float, text: str, numeric: bytes) -> tuple[bytes, bytes, bytes]:
        before, between, after = self.measured.frame((value, _DOUBLE(value)), (text, numeric))
        inner = before + _DOUBLE(value) + between + numeric + after
        outer_before, outer_after = self.num.frame((inner, inner))
        return outer_before + before, between, after + outer_after


def _decimal_strings(values: list[float]) -> list[str]:
    """``format_number_as_ds`` of each value, a probability's usual case inline (a fifth of
    writing a group): within [0.001, 1) its text is Python's where that fits 16 characters,
    else the value to 14 decimals."""
    texts = []
    for value in values:
        if 0.001 <= value < 1.0:
            text = repr(value)
            texts.append(text if len(text) <= 16 else f"{value:.14f}")
        else:
            texts.append(format_number_as_ds(value))
    return texts


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
    return read_only(root)


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
    return read_only(item)


def _text(name: Code, value: str) -> LazyCopy:
    """A TEXT item as highdicom's TextContentItem makes it (a copy of a cached one, made when
    reached)."""
    return LazyCopy(_text_prototype(name), {_TEXT_VALUE: str(value)})


@lru_cache(maxsize=16)
def _text_prototype(name: Code) -> hd.sr.TextContentItem:
    item = hd.sr.TextContentItem(
        name=name, value="-", relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    return read_only(item)


@lru_cache(maxsize=1)
def _evaluations_prototype() -> hd.sr.ContainerContentItem:
    item = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    return read_only(item)


def _evaluations(report: Report) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-14: the impression, the provenance and the missing regions as TEXT."""
    return _evaluations_copy(report).make()  # its texts are made when reached


def _evaluations_copy(report: Report) -> LazyCopy:
    """:func:`_evaluations`' item, made when reached."""
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
    return LazyCopy(_evaluations_prototype(), {_CONTENT_SEQUENCE: tuple(texts)})
