"""What the two DICOM writers (SR and GSPS) share: the source header, the equipment, the errors.

Both objects belong to the source image's study and patient (PS3.3 C.7.1.1, C.7.2.1), so both
start from a copy of the source header; anonymised inputs often lack the type 2 attributes that
highdicom reads, so the copy gets empty ones (empty is valid for type 2; the header itself is
never changed). Both say which model made them and that they are not for diagnostic use, in the
series description and in a Contributing Equipment item of purpose "Processing Algorithm" as the
IHE AI Results profile asks (highdicom's own class only takes DCM purposes, so the item is raw).
Any failure becomes one :class:`~anaxreport.errors.ExportError` naming the source SOP Instance
UID, so the CLI never shows a traceback.

Writers that reuse items highdicom built once (prototypes) copy them with :func:`copy_item`, which
shares nothing mutable with the prototype, so that no output ever changes another.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, TypeVar

from highdicom import PatientSexValues
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept as HdCodedConcept
from highdicom.valuerep import check_person_name
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pydicom.valuerep import DA, DT, IS, TM, DSdecimal, DSfloat, ISfloat, PersonName

from ..errors import ExportError
from ..vocab import LOCAL_SCHEME, CodedConcept
from .encode import encode_copy
from .shared import DeferredCopy, LazyCopy, lazy_sequence, read_only, sequence_entries
from .uids import derived_uid

if TYPE_CHECKING:
    from ..report import Provenance, Report

__all__ = [
    "IDENTITY_TAGS",
    "MANUFACTURER",
    "PLACEHOLDER_UID",
    "PROCESSING_ALGORITHM",
    "ai_equipment_prototype",
    "append_ai_equipment",
    "check_identity",
    "coded",
    "coding_schemes",
    "completed_header",
    "copy_body_part",
    "copy_element",
    "copy_item",
    "device_uid",
    "export_errors",
    "fresh_copy",
    "model_description",
    "model_versions",
    "new_dataset",
    "not_for_diagnosis",
    "require_header",
    "sequence_like",
    "software_versions",
    "source_header",
    "tag_of",
]

#: Stands in for per-report UIDs in the renderers' cached prototypes; every report replaces it.
PLACEHOLDER_UID = "2.25.0"

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

#: What highdicom's SOPClass sets from the source before copying its Patient and Study modules
#: over them: a writer that copies those modules needs them among the copied attributes.
IDENTITY_TAGS = frozenset(Tag(keyword) for keyword in (*TYPE2_IDENTITY, "StudyInstanceUID"))

_LONG_STRING = 64  # LO: SeriesDescription, ContentDescription

_Item = TypeVar("_Item", bound=Dataset)


def require_header(report: Report, what: str) -> Dataset:
    """The report's source header itself (not a copy: read it, never change it).

    Raises :class:`ExportError` when the report has no header (hand-made findings).
    """
    if report.header is None:
        raise ExportError(
            f"cannot write the {what} for SOP Instance UID "
            f"{report.study.sop_instance_uid or '(unknown)'}: the report has no source DICOM "
            "header (findings made by hand, not read from a DICOM file)"
        )
    return report.header


def source_header(report: Report, what: str) -> Dataset:
    """A copy of the source header with empty type 2 identity attributes where absent.

    Raises :class:`ExportError` when the report has no header (hand-made findings).
    """
    return completed_header(require_header(report, what))


def completed_header(header: Dataset) -> Dataset:
    """:func:`source_header` of a header given apart."""
    header = copy.deepcopy(header)
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
    return _device_uid(report.provenance)


def _device_uid(p: Provenance) -> str:
    return derived_uid("device", p.model_name, p.model_version, p.weights_sha256)


def software_versions(report: Report) -> list[str]:
    """The software and the model version (Software Versions is LO, multi-valued)."""
    return model_versions(report.provenance)


def model_versions(p: Provenance) -> list[str]:
    """:func:`software_versions` of any report made with ``p``."""
    return [p.software[:_LONG_STRING], p.model_version]


def not_for_diagnosis(report: Report) -> str:
    """A LO (≤ 64 characters) saying AI output, not for diagnostic use, and the model.

    The warning comes first so that a long model name is what gets cut.
    """
    return model_description(report.provenance)


def model_description(p: Provenance) -> str:
    """:func:`not_for_diagnosis` of any report made with ``p``."""
    return f"AI output, not for diagnostic use: {p.model_name} {p.model_version}"[:_LONG_STRING]


@lru_cache(maxsize=16)
def ai_equipment_prototype(p: Provenance) -> Dataset:
    """The algorithm's Contributing Equipment item, built once per model (read-only)."""
    purpose = Dataset()
    purpose.CodeValue = PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = p.model_name[:_LONG_STRING]
    item.SoftwareVersions = model_versions(p)
    item.DeviceUID = _device_uid(p)
    item.ContributionDescription = (
        f"{p.model_name} {p.model_version} (weights sha256 {p.weights_sha256}, "
        f"trained on {p.training_data}; {p.software}). {p.disclaimer}"
    )[:1024]
    return read_only(item)


def header_value(header: Dataset, keyword: str, default: Any = None) -> Any:
    """``header.get(keyword, default)``: the value of the element, read from the data set's
    elements where it is converted already (every one a header read_radiograph keeps is), a
    tenth of the time of Dataset's look-up; else through ``header[tag]``, which converts it."""
    tag = tag_of(keyword)
    element = dict.get(header._dict, tag)  # type: ignore[call-overload]
    if element is None:
        return default
    if type(element) is DataElement:
        return element.value
    return header[tag].value


def uid_of(value: str) -> UID:
    """``UID(value)``: the value itself where it is one already (a UID is immutable, and was
    checked when it was made)."""
    return value if type(value) is UID else UID(value)


def our_uid(value: str) -> UID:
    """A UID of ours (:mod:`.uids`: ``2.25.`` and at most 39 digits) as pydicom holds it,
    without pydicom's check of its form, which it passes by construction."""
    return UID(value, validation_mode=config.IGNORE)


def check_identity(header: Dataset) -> None:
    """What highdicom's ``SOPClass`` does with the source's identity values before copying the
    Patient and Study modules over them: its checks, warnings and errors (ValueError where it
    would have none of the source's Study Instance UID)."""
    values = {k: "" if (v := header_value(header, k)) is None else v for k in TYPE2_IDENTITY}
    check_person_name(values["PatientName"])
    DA(values["PatientBirthDate"])
    if values["PatientSex"] != "":
        PatientSexValues(values["PatientSex"])
    DA(values["StudyDate"])
    TM(values["StudyTime"])
    if tag_of("StudyInstanceUID") not in header._dict:
        raise ValueError("the source has no Study Instance UID")


def append_ai_equipment(dataset: Dataset, report: Report) -> None:
    """Append a copy of the algorithm's item after the ones highdicom wrote (source,
    highdicom), made when reached (:func:`fresh_copy`)."""
    tag = tag_of("ContributingEquipmentSequence")
    items = sequence_entries(dataset, tag)
    lazy_sequence(dataset, tag, (*items, fresh_copy(ai_equipment_prototype(report.provenance))))


def fresh_copy(item: Dataset, values: Mapping[BaseTag, Any] | None = None) -> DeferredCopy:
    """``LazyCopy(item, values)`` of a read-only prototype, written from its kept bytes and,
    when reached, made as :func:`copy_item` makes copies: sharing nothing with the prototype,
    its items of the classes highdicom made."""
    lazy = LazyCopy(item, values or {})
    return DeferredCopy(lambda: copy_item(lazy.make()), partial(encode_copy, lazy))


def copy_item(item: _Item, **values: Any) -> _Item:
    """A copy of ``item`` (same class) that shares nothing mutable with it, with the elements
    named by keyword in ``values`` set anew.

    Much cheaper than building the item again with highdicom: its checks do not run again and
    the copied values are not converted again. A new value is converted by pydicom as an
    attribute assignment would convert it, unless it is given as a :class:`DataElement` (of a
    value already in pydicom's form), which goes in as it is.
    """
    old = dict(item.items())
    changed = {}
    for keyword, value in values.items():
        tag = tag_of(keyword)
        if not isinstance(value, DataElement):  # an existing element keeps its VR
            vr = dictionary_VR(tag) if tag not in old else old[tag].VR
            value = DataElement(tag, vr, value)
        changed[tag] = value
    elements = {}
    for tag, element in old.items():  # the item's order: a new value keeps its element's place
        new_element = changed.pop(tag, None)
        elements[tag] = copy_element(element) if new_element is None else new_element
    elements.update(changed)
    cls = getattr(type(item), "_editable", type(item))  # a read-only item's copy is editable
    new = new_dataset(cls, elements)
    if item.is_undefined_length_sequence_item:
        new.is_undefined_length_sequence_item = True
    return new


def new_dataset(cls: type[_Item], elements: dict[BaseTag, DataElement]) -> _Item:
    """``Dataset.__init__(new, elements)`` on a new ``cls`` (whose own constructor does not
    run), in a tenth of the time: the state ``Dataset.__init__`` sets, copied from a fresh data
    set's, where its thirteen assignments each go through ``Dataset.__setattr__`` (pydicom 3.0;
    ``tests/test_encode.py`` holds the two to the same state)."""
    new = cls.__new__(cls)
    state = new.__dict__
    for name, value in _FRESH_STATE.items():
        state[name] = value.copy() if type(value) is dict else value
    state["_dict"] = elements
    return new


#: A new data set's state, as ``Dataset.__init__`` leaves it.
_FRESH_STATE = Dataset().__dict__


@lru_cache(maxsize=512)
def tag_of(keyword: str) -> BaseTag:
    """The tag of a DICOM keyword (ValueError for anything else)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"not a DICOM keyword: {keyword}")
    return BaseTag(tag)


def copy_element(element: Any) -> DataElement:
    """A copy of a data element that shares nothing mutable with it: sequences are copied item
    by item (:func:`copy_item`), multiple values go into a new list, single values (immutable)
    are shared.

    Raises :class:`TypeError` for what it cannot copy exactly: raw elements (read from a file,
    never converted), VR UN, values of other types.
    """
    if not isinstance(element, DataElement) or element.VR == "UN":
        raise TypeError(f"cannot copy the raw or UN element {element.tag}")
    value = element.value
    if type(value) in _IMMUTABLE:
        return DataElement(
            element.tag,
            element.VR,
            value,
            is_undefined_length=element.is_undefined_length,
            already_converted=True,
        )
    if isinstance(value, Sequence):
        items = sequence_like(value, [copy_item(item) for item in value])
        return DataElement(
            element.tag,
            element.VR,
            items,
            is_undefined_length=element.is_undefined_length,
            already_converted=True,
        )
    if isinstance(value, MultiValue | list):
        # pydicom's conversion of the same values again (idempotent): a MultiValue of its own
        return DataElement(
            element.tag, element.VR, list(value), is_undefined_length=element.is_undefined_length
        )
    raise TypeError(f"cannot copy a value of type {type(value).__name__} ({element.tag})")


#: Types of single values that :func:`copy_element` shares (immutable).
_IMMUTABLE = frozenset(
    {
        str,
        bytes,
        int,
        float,
        type(None),
        UID,
        PersonName,
        DA,
        DT,
        TM,
        IS,
        ISfloat,
        DSfloat,
        DSdecimal,
    }
)


def sequence_like(sequence: Sequence, items: list[Dataset]) -> Sequence:
    """A new sequence of ``items``, of the class of ``sequence`` (highdicom subclasses pydicom's
    Sequence for some attributes; their constructors do not run again); editable where
    ``sequence`` is read-only."""
    cls = getattr(type(sequence), "_editable", type(sequence))
    new = cls.__new__(cls)
    Sequence.__init__(new, items)
    return new


def copy_body_part(derived: Dataset, header: Dataset) -> None:
    """General Series Body Part Examined and Laterality (type 2C, PS3.3 C.7.3.1) of the source.

    The chest is unpaired: with Body Part Examined present, Laterality may be absent; a source
    without either gets an empty Laterality ("unknown", which type 2C allows).
    """
    for keyword in ("BodyPartExamined", "Laterality"):
        value = header_value(header, keyword)
        if value:
            setattr(derived, keyword, value)
    if not derived.get("BodyPartExamined") and "Laterality" not in derived:
        derived.Laterality = ""
