"""The region boxes as a Grayscale Softcopy Presentation State (PS3.3 A.33.1).

Why: most PACS viewers draw a GSPS over its image but do not draw SR content, so the same boxes
as the SR (same coordinates: source pixels, origin at the top-left corner of the top-left pixel,
which is what PIXEL annotation units mean, PS3.3 C.10.5.1.2) go here as closed POLYLINEs with
text labels, each box and its label in one graphic group so that viewers move them together.

Two graphic layers, so a reader can hide the anatomy and keep what matters:

* ``FINDINGS`` (drawn on top, red): regions with at least one present call, labelled with the
  region and its present findings with probabilities ("right lower lung zone: pleural effusion
  0.93");
* ``ANATOMY`` (below, green): every other region the detector found, labelled with its name.

Grayscale pipeline: the Modality LUT and the source's own window (or VOI LUT) are copied by
highdicom; a source without any gets a linear window over its full stored range, which is what
the image would show without a VOI. A GSPS ignores the image's Photometric Interpretation
(PS3.4 N.2), so a MONOCHROME1 source gets Presentation LUT Shape INVERSE (as dcmpsmk does) and
still shows bone white; MONOCHROME2 gets IDENTITY.

Speed: highdicom's constructor takes about 20 ms per GSPS, mostly looking attributes up in its
tables of the standard (the same answers for every image of a SOP class) and checking and
converting the same items again. So highdicom builds, once per model, a GSPS of a placeholder
image and each region's group, box and label with placeholder values (*prototypes*, cached);
a report's GSPS is made of copies of them holding its own values (ours go in already converted),
of the source's attributes that highdicom copies (its tables read once per SOP class) and of
highdicom's Modality LUT, VOI LUT and Presentation LUT items (built once per distinct value).
That takes about a fifth of the time, much of it pydicom making the ~70 data sets and
~430 elements of a GSPS; so the regions' groups, boxes and labels (most of them) are made only
when reached, and written to DICOM from their prototypes' compiled bytes (a third of the time
again). Copies share nothing mutable with the prototypes or with each other.
The result is equal, element for element and in the same order, to what the constructor makes
(:func:`_render_gsps_highdicom`, the tests' reference). Where only the file is wanted,
:func:`write_gsps` takes the same steps into the places of a read-only document of the model's
elements and writes that from its kept bytes, without making the data set. A source this does
not cover exactly (multi-frame, tiled, VOI LUT tables, code extension character sets, boxes
outside the image, values highdicom refuses...) goes through the constructor, which gives what
it always gave, errors included.
"""

from __future__ import annotations

import datetime
import logging
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import highdicom as hd
import numpy as np
from highdicom.color import CIELabColor
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, ComputedRadiographyImageStorage
from pydicom.valuerep import DA, DT, TM

from ..errors import ExportError
from ..geometry import BoundingBox
from ..vocab import REGIONS
from ._dicom import (
    IDENTITY_TAGS,
    MANUFACTURER,
    PLACEHOLDER_UID,
    TYPE2_IDENTITY,
    ai_equipment_prototype,
    append_ai_equipment,
    check_identity,
    copy_body_part,
    copy_element,
    copy_item,
    export_errors,
    fresh_copy,
    header_value,
    model_description,
    model_versions,
    new_dataset,
    our_uid,
    require_header,
    sequence_like,
    source_header,
    tag_of,
    uid_of,
)
from .encode import ItemTemplate, encode, encode_document
from .shared import DeferredCopy, Entries, LazyCopy, copy_value, lazy_sequence, read_only
from .uids import result_uid, series_uid, tracking_uid

if TYPE_CHECKING:
    from ..report import Provenance, Report
    from ..vocab import Region

__all__ = [
    "ANATOMY_LAYER",
    "CONTENT_LABEL",
    "FINDINGS_LAYER",
    "GSPS_SERIES_NUMBER",
    "render_gsps",
    "write_gsps",
]

FINDINGS_LAYER = "FINDINGS"
ANATOMY_LAYER = "ANATOMY"
#: Content Label (CS: capitals, digits, underscore, space; ≤ 16 characters).
CONTENT_LABEL = "AI_REGIONS"
#: Series number of anaxreport GSPS series (the SR series is 9901).
GSPS_SERIES_NUMBER = 9902

_WHAT = "GSPS"
_SHORT_TEXT = 1024  # ST: Unformatted Text Value

_log = logging.getLogger(__name__)


#: Stands in for each report's box in the prototypes (as _dicom.PLACEHOLDER_UID for UIDs).
_PLACEHOLDER_BOX = BoundingBox(0.0, 0.0, 1.0, 1.0)


def render_gsps(report: Report) -> Dataset:
    """A GSPS of the source image with the found regions' boxes and labels.

    Made of copies of what highdicom built once (see the module's "Speed"); a source those do
    not cover goes through highdicom's constructor. Raises
    :class:`~anaxreport.errors.ExportError` when the report has no source header or highdicom
    refuses the content.
    """
    header = _grayscale(report, require_header(report, _WHAT))
    try:
        return _assemble(report, header)
    except Exception as exc:  # a source the copies do not cover: highdicom decides
        _log.debug("GSPS built by highdicom's constructor: %r", exc)
    return _render_gsps_highdicom(report)


def write_gsps(report: Report) -> bytes:
    """``encode(render_gsps(report))``, the GSPS's file, written without making the data set:
    the same steps as :func:`render_gsps`'s copies (:func:`_build`), their values put in the
    places of a read-only document of the model's elements and written from its kept bytes
    (:func:`~.encode.encode_document`). A source this does not cover goes that long way, which
    gives the same bytes or the same error."""
    try:
        header = _grayscale(report, require_header(report, _WHAT))
        checked = _checked(report, header)
        builder = _FileBuilder(checked.proto)
        _build(builder, report, header, checked)
        document, meta = checked.proto.document, checked.proto.gsps.file_meta
        return encode_document(LazyCopy(document, builder.values), meta)
    except Exception as exc:  # the long way decides: the same bytes, or its error
        _log.debug("the GSPS file is written from its data set: %r", exc)
    return encode(render_gsps(report))


def _render_gsps_highdicom(report: Report) -> Dataset:
    """The GSPS as highdicom's constructor builds it: the reference the fast path equals."""
    header = _grayscale(report, source_header(report, _WHAT))
    with export_errors(report, _WHAT):
        layers, annotations, groups = _graphics(report, header)
        gsps = _construct(
            header,
            report.provenance,
            series_uid(report, "gsps"),
            result_uid(report, "gsps"),
            layers,
            annotations,
            groups,
        )
        copy_body_part(gsps, header)
        append_ai_equipment(gsps, report)
    return gsps


def _grayscale(report: Report, header: Dataset) -> Dataset:
    """``header``, once it is known to be of a grayscale image (a GSPS needs one)."""
    if header_value(header, "SamplesPerPixel", 1) != 1:
        raise ExportError(
            f"cannot write the {_WHAT} for SOP Instance UID {report.study.sop_instance_uid}: "
            "the source is not a grayscale image"
        )
    return header


def _construct(
    header: Dataset,
    provenance: Provenance,
    series_instance_uid: str,
    sop_instance_uid: str,
    layers: list[hd.pr.GraphicLayer],
    annotations: list[hd.pr.GraphicAnnotation],
    groups: list[hd.pr.GraphicGroup],
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """highdicom's GSPS of ``header`` (the reference and the prototype are both made here)."""
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[header],
        series_instance_uid=series_instance_uid,
        series_number=GSPS_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=provenance.model_name[:64],
        software_versions=model_versions(provenance),
        # the trained model's identity; highdicom asks for a serial number
        device_serial_number=provenance.weights_sha256[:16],
        content_label=CONTENT_LABEL,
        content_description=model_description(provenance),
        graphic_annotations=annotations or None,
        graphic_layers=layers or None,
        graphic_groups=groups or None,
        voi_lut_transformations=_voi(header),
        presentation_lut_transformation=_presentation_lut(header),
        series_description=model_description(provenance),
    )


def _present_labels(report: Report) -> dict[Region, str]:
    """``"<region>: <finding> <p>, ..."`` of each region with present calls (findings in vocab
    order); the other regions are labelled with their name."""
    present: dict[Region, list[str]] = {}
    for call in report.present_calls():
        present.setdefault(call.region, []).append(f"{call.finding.name} {call.probability:.2f}")
    return {r: f"{r.name}: {', '.join(calls)}"[:_SHORT_TEXT] for r, calls in present.items()}


def _layers() -> dict[str, hd.pr.GraphicLayer]:
    """The two layers, FINDINGS first."""
    return {
        FINDINGS_LAYER: hd.pr.GraphicLayer(
            FINDINGS_LAYER,
            order=2,
            description="regions with a present finding (AI, not for diagnostic use)",
            display_color=CIELabColor(53.2, 80.1, 67.2),  # red
        ),
        ANATOMY_LAYER: hd.pr.GraphicLayer(
            ANATOMY_LAYER,
            order=1,
            description="other regions found by the detector (AI, not for diagnostic use)",
            display_color=CIELabColor(87.7, -86.2, 83.2),  # green
        ),
    }


def _graphics(
    report: Report, header: Dataset
) -> tuple[list[hd.pr.GraphicLayer], list[hd.pr.GraphicAnnotation], list[hd.pr.GraphicGroup]]:
    """The two layers, one annotation per non-empty layer, one group per found region."""
    layers = _layers()
    objects: dict[str, tuple[list[hd.pr.GraphicObject], list[hd.pr.TextObject]]] = {
        name: ([], []) for name in layers
    }
    groups = []
    labels = _present_labels(report)
    for result in report.regions:
        if result.box is None:
            continue
        group = hd.pr.GraphicGroup(len(groups) + 1, result.name)
        groups.append(group)
        label = labels.get(result.region)
        graphics, texts = objects[FINDINGS_LAYER if label else ANATOMY_LAYER]
        uid = tracking_uid(report, result.region)
        graphic, text = _box_and_label(result.box, result.name, uid, label or result.name, group)
        graphics.append(graphic)
        texts.append(text)
    annotations = [
        hd.pr.GraphicAnnotation(
            referenced_images=[header],
            graphic_layer=layers[name],
            graphic_objects=graphics,
            text_objects=texts,
        )
        for name, (graphics, texts) in objects.items()
        if graphics
    ]
    used = [layers[a.GraphicLayer] for a in annotations]
    return used, annotations, groups


def _box_and_label(
    box: BoundingBox, name: str, uid: str, label: str, group: hd.pr.GraphicGroup
) -> tuple[hd.pr.GraphicObject, hd.pr.TextObject]:
    """The box as a closed POLYLINE and its label anchored at the box's top-left corner,
    both carrying the region's tracking identifier and UID (the same as in the SR)."""
    graphic = hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(box.polyline(), dtype=np.float64),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        tracking_id=name,
        tracking_uid=uid,
        graphic_group=group,
    )
    text = hd.pr.TextObject(
        text_value=label,
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        anchor_point=(box.x1, box.y1),
        anchor_point_visible=False,
        tracking_id=name,
        tracking_uid=uid,
        graphic_group=group,
    )
    return graphic, text


def _voi(header: Dataset) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """None to let highdicom copy the source's window or VOI LUT; otherwise a linear window
    over the full stored range mapped through the source's rescale (PS3.3 C.11.2.1.2)."""
    window = _full_range_window(header)
    if window is None:
        return None
    center, width = window
    # One-item lists: highdicom 0.28 splits a plain str explanation into characters.
    return [
        hd.pr.SoftcopyVOILUTTransformation(
            window_center=[center], window_width=[width], window_explanation=[_FULL_RANGE]
        )
    ]


_FULL_RANGE = "FULL STORED RANGE"


def _full_range_window(header: Dataset) -> tuple[float, float] | None:
    """The center and width of :func:`_voi`'s window, None for a source with its own VOI."""
    if "WindowCenter" in header or "VOILUTSequence" in header:
        return None
    bits = int(header_value(header, "BitsStored") or header_value(header, "BitsAllocated") or 16)
    signed = int(header_value(header, "PixelRepresentation") or 0) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(header_value(header, "RescaleSlope") or 1.0)
    intercept = float(header_value(header, "RescaleIntercept") or 0.0)
    lo, hi = sorted((low * slope + intercept, high * slope + intercept))
    # LINEAR maps [c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2] onto the output range.
    return round((lo + hi) / 2 + 0.5, 4), round(hi - lo + 1, 4)


def _presentation_lut(header: Dataset) -> hd.PresentationLUTTransformation:
    """INVERSE for MONOCHROME1 (GSPS output is MONOCHROME2 semantics), else IDENTITY."""
    return hd.PresentationLUTTransformation(presentation_lut_shape=_presentation_lut_shape(header))


def _presentation_lut_shape(header: Dataset) -> hd.PresentationLUTShapeValues:
    shapes = hd.PresentationLUTShapeValues
    inverse = str(header_value(header, "PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    return shapes.INVERSE if inverse else shapes.IDENTITY


# --- the fast path: copies of what highdicom built once ------------------------------------


class _Uncovered(Exception):
    """The source is one the fast path does not reproduce exactly; highdicom builds its GSPS."""


class _RegionItems(NamedTuple):
    """A region's graphic group, box and label as highdicom builds them (placeholder values)."""

    group: hd.pr.GraphicGroup
    graphic: hd.pr.GraphicObject
    text: hd.pr.TextObject


class _Prototypes:
    """What highdicom builds once per model: the GSPS of a placeholder image with one box on
    each layer, and every region's items."""

    def __init__(self, provenance: Provenance) -> None:
        image = _placeholder_image()
        self.regions: dict[Region, _RegionItems] = {}
        for region in REGIONS:
            group = hd.pr.GraphicGroup(1, region.name)
            graphic, text = _box_and_label(
                _PLACEHOLDER_BOX, region.name, PLACEHOLDER_UID, region.name, group
            )
            self.regions[region] = _RegionItems(*(read_only(i) for i in (group, graphic, text)))
        first = self.regions[REGIONS[0]]
        layers = _layers()
        annotations = [
            hd.pr.GraphicAnnotation(
                referenced_images=[image],
                graphic_layer=layer,
                graphic_objects=[first.graphic],
                text_objects=[first.text],
            )
            for layer in layers.values()
        ]
        self.gsps = _construct(
            image,
            provenance,
            PLACEHOLDER_UID,
            PLACEHOLDER_UID,
            list(layers.values()),
            annotations,
            [first.group],
        )
        self.model = {element.keyword: element for element in self.gsps}  # by keyword
        # the model's elements of every report's GSPS, written from their kept bytes
        self.document = new_dataset(type(self.gsps), {})
        self.document.preamble = self.gsps.preamble
        for keyword in _MODEL:
            _put(self.document, copy_element(self.model[keyword]))
        read_only(self.document)
        # the items a report's GSPS holds copies of, made when reached (read-only, encoded once)
        (equipment,) = self.gsps.ContributingEquipmentSequence
        self.equipment = read_only(copy_item(equipment))
        (series,) = self.gsps.ReferencedSeriesSequence
        self.series = read_only(copy_item(series))
        (self.image,) = self.series.ReferencedImageSequence
        (area,) = self.gsps.DisplayedAreaSelectionSequence
        self.area = read_only(copy_item(area))
        self.layers = {
            item.GraphicLayer: read_only(copy_item(item)) for item in self.gsps.GraphicLayerSequence
        }
        self.annotations = {
            item.GraphicLayer: read_only(copy_item(item))
            for item in self.gsps.GraphicAnnotationSequence
        }
        self._templates: dict[tuple[int, tuple[str, ...], str], _Template] = {}

    def item_bytes(self, prototype: Dataset, values: dict[str, Any], codec: str) -> bytes:
        """The bytes of :func:`_region_item`'s copy of ``prototype`` (one of :attr:`regions`'
        items) holding ``values``, from the prototype's template compiled for ``codec``."""
        key = (id(prototype), tuple(values), codec)
        compiled = self._templates.get(key)
        if compiled is None:
            order = sorted(values, key=tag_of)
            tags = tuple(map(tag_of, order))
            compiled = self._templates[key] = _Template(ItemTemplate(prototype, tags, codec), order)
        template, order = compiled
        return template.item_of(*[values[keyword] for keyword in order])


class _Template(NamedTuple):
    """An item template and its values' keywords in the order of their tags."""

    template: ItemTemplate
    order: list[str]


@lru_cache(maxsize=16)
def _prototypes(provenance: Provenance) -> _Prototypes:
    return _Prototypes(provenance)


def _placeholder_image() -> Dataset:
    """The smallest header highdicom's GSPS constructor accepts: a 1×1 CR image."""
    image = Dataset()
    image.SOPClassUID = ComputedRadiographyImageStorage
    image.SOPInstanceUID = PLACEHOLDER_UID
    image.StudyInstanceUID = PLACEHOLDER_UID
    image.SeriesInstanceUID = PLACEHOLDER_UID
    for keyword in TYPE2_IDENTITY:
        setattr(image, keyword, "")
    image.SamplesPerPixel = 1
    image.PhotometricInterpretation = "MONOCHROME2"
    image.Rows = image.Columns = 1
    return image


class _SourceIOD(NamedTuple):
    """What highdicom's GSPS constructor looks up in its tables of the standard about the
    source's IOD (about a millisecond per look-up, the same answer for every image)."""

    copied_tags: tuple[BaseTag, ...]  # root attributes of the Patient, Study and Specimen modules
    is_multiframe: bool
    is_image: bool


@lru_cache(maxsize=64)
def _source_iod(sop_class_uid: str) -> _SourceIOD:
    """As ``SOPClass.copy_patient_and_study_information``, ``copy_specimen_information``,
    ``is_multiframe_image`` and ``does_iod_have_pixel_data`` see it (highdicom's own tables)."""
    from highdicom._standard_utils import (  # private: any change sends sources to highdicom
        does_iod_have_pixel_data,
        get_iod_module_map,
        get_module_attribute_map,
        get_sop_class_iod_map,
        is_attribute_in_iod,
    )

    modules = get_iod_module_map()[get_sop_class_iod_map()[sop_class_uid]]
    keywords = [
        str(attribute["keyword"])
        for ie, key in (("Patient", None), ("Study", None), ("Image", "specimen"))
        for module in modules
        if module["ie"] == ie and key in (None, module["key"])
        for attribute in get_module_attribute_map()[module["key"]]
        if len(attribute["path"]) == 0
    ]
    tags = [tag_for_keyword(keyword) for keyword in keywords]
    if None in tags:
        raise _Uncovered("highdicom copies a keyword pydicom does not know")
    copied = tuple(BaseTag(tag) for tag in dict.fromkeys(tags) if tag is not None)
    # highdicom also sets these from the source, and the copy must overwrite them
    if not IDENTITY_TAGS.issubset(copied):
        raise _Uncovered(f"the IOD of {sop_class_uid} lacks patient or study attributes")
    return _SourceIOD(
        copied,
        is_multiframe=is_attribute_in_iod("NumberOfFrames", sop_class_uid),
        is_image=does_iod_have_pixel_data(sop_class_uid),
    )


def _assemble(report: Report, header: Dataset) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The GSPS made of copies of the prototypes holding this report's values, set in the order
    in which highdicom's constructor sets them; raises where the constructor might do
    otherwise."""
    checked = _checked(report, header)
    builder = _DatasetBuilder(report, checked.proto)
    _build(builder, report, header, checked)
    return builder.gsps


class _Checked(NamedTuple):
    """What a GSPS is built from besides the report and the source's header (:func:`_checked`)."""

    iod: _SourceIOD
    proto: _Prototypes
    now: datetime.datetime


def _checked(report: Report, header: Dataset) -> _Checked:
    """What the constructor looks up about the source, after its checks of it; raises where it
    might do otherwise than the copies."""
    if header_value(header, "SamplesPerPixel") != 1:
        raise _Uncovered("not grayscale")
    iod = _source_iod(str(header_value(header, "SOPClassUID")))
    if iod.is_multiframe or not iod.is_image or "TotalPixelMatrixRows" in header:
        raise _Uncovered("a multi-frame or tiled image, or not an image")
    check_identity(header)
    return _Checked(iod, _prototypes(report.provenance), datetime.datetime.now())


def _build(gsps: _Builder, report: Report, header: Dataset, checked: _Checked) -> None:
    """Every element of the report's GSPS, in the constructor's order."""
    proto, now = checked.proto, checked.now
    equipment = _sop_instance(gsps, report, header, checked)
    _add_presentation_state(gsps, header, proto, now)
    _add_graphics(gsps, report, header, proto)
    _add_display(gsps, header, proto)
    gsps.body_part(header)
    # as append_ai_equipment: the algorithm's item after highdicom's
    algorithm = fresh_copy(ai_equipment_prototype(report.provenance))
    gsps.sequence(tag_of("ContributingEquipmentSequence"), (equipment, algorithm))


class _Builder(Protocol):
    """Where :func:`_build` puts a GSPS's elements: a data set, or a file's values."""

    def element(self, element: DataElement) -> None:
        """An element of ours (a public one, not Pixel Data)."""

    def copy(self, element: DataElement) -> None:
        """A copy of a shared element (a prototype's)."""

    def model(self, keyword: str) -> None:
        """The prototype's element of ``keyword``, which depends on the model only."""

    def sequence(self, tag: BaseTag, entries: Entries) -> None:
        """A sequence of these items, made when reached."""

    def character_set(self, value: str) -> None:
        """The Specific Character Set, as an attribute set converts it."""

    def body_part(self, header: Dataset) -> None:
        """:func:`copy_body_part` of the source."""


class _DatasetBuilder:
    """The GSPS as a data set (:func:`render_gsps`)."""

    def __init__(self, report: Report, proto: _Prototypes) -> None:
        root = proto.gsps
        self.gsps = new_dataset(type(root), {})  # its class's constructor does not run
        self.gsps.preamble = root.preamble
        self.gsps.file_meta = _file_meta(root.file_meta, result_uid(report, "gsps"))
        self._model = proto.model

    def element(self, element: DataElement) -> None:
        _put(self.gsps, element)

    def copy(self, element: DataElement) -> None:
        _put(self.gsps, copy_element(element))

    def model(self, keyword: str) -> None:
        _put(self.gsps, copy_element(self._model[keyword]))

    def sequence(self, tag: BaseTag, entries: Entries) -> None:
        lazy_sequence(self.gsps, tag, entries)

    def character_set(self, value: str) -> None:
        self.gsps.SpecificCharacterSet = value

    def body_part(self, header: Dataset) -> None:
        copy_body_part(self.gsps, header)


class _FileBuilder:
    """The GSPS's values in the places of the prototypes' document of the model's elements
    (:attr:`_Prototypes.document`), for :func:`write_gsps`; raises where an element is not as
    the document's place for it would write it."""

    def __init__(self, proto: _Prototypes) -> None:
        self._document = proto.document
        self.values: dict[BaseTag, Any] = {}

    def element(self, element: DataElement) -> None:
        self.values[element.tag] = copy_value(self._document, element)

    copy = element  # written, never changed: no copy needed

    def model(self, keyword: str) -> None:
        if tag_of(keyword) not in self._document._dict:
            raise _Uncovered(f"{keyword} is not in the prototypes' document")

    def sequence(self, tag: BaseTag, entries: Entries) -> None:
        self.values[tag] = entries

    def character_set(self, value: str) -> None:
        self.element(DataElement(tag_of("SpecificCharacterSet"), "CS", value))

    def body_part(self, header: Dataset) -> None:
        copied = Dataset()
        copy_body_part(copied, header)
        for element in copied:
            self.element(element)


def _sop_instance(
    gsps: _Builder, report: Report, header: Dataset, checked: _Checked
) -> DeferredCopy:
    """What highdicom's ``SOPClass`` sets: identity (final values: the source's, which it
    copies over them), series, equipment, SOP Common; then the rest of the source's Patient,
    Study and Specimen modules and highdicom's Contributing Equipment item (returned)."""
    iod, proto, now = checked
    identity = _identity(header, iod)
    for tag in _SOP_CLASS_IDENTITY:
        gsps.element(identity.pop(tag))
    _set(gsps, "SeriesInstanceUID", our_uid(series_uid(report, "gsps")))
    _add_model(gsps, "SeriesNumber", "Modality", "SeriesDescription", "Manufacturer")
    _add_model(gsps, "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions")
    _set(gsps, "SOPInstanceUID", our_uid(result_uid(report, "gsps")))
    _add_model(gsps, "SOPClassUID", "InstanceNumber")
    _set(gsps, "InstanceCreationDate", DA(now.date()))
    _set(gsps, "InstanceCreationTime", TM(now.time()))
    charset = header_value(header, "SpecificCharacterSet")
    if charset is not None:
        gsps.character_set(_single_character_set(charset))
    for element in identity.values():
        gsps.element(element)
    equipment = fresh_copy(proto.equipment, {tag_of("ContributionDateTime"): DT(now)})
    gsps.sequence(tag_of("ContributingEquipmentSequence"), (equipment,))
    return equipment


def _add_presentation_state(
    gsps: _Builder, header: Dataset, proto: _Prototypes, now: datetime.datetime
) -> None:
    """Presentation State Identification and Relationship (the source image's reference)."""
    _add_model(gsps, "ContentLabel", "ContentDescription")
    _set(gsps, "PresentationCreationDate", DA(now.date()))
    _set(gsps, "PresentationCreationTime", TM(now.time()))
    _add_model(gsps, "ContentCreatorName")
    image = LazyCopy(proto.image, _image_reference(header))
    series = fresh_copy(
        proto.series,
        {
            tag_of("SeriesInstanceUID"): uid_of(header_value(header, "SeriesInstanceUID")),
            tag_of("ReferencedImageSequence"): (image,),
        },
    )
    gsps.sequence(tag_of("ReferencedSeriesSequence"), (series,))


def _image_reference(header: Dataset) -> dict[BaseTag, UID]:
    """The source image's SOP Class and Instance UIDs, for a reference to it."""
    return {
        tag_of("ReferencedSOPClassUID"): uid_of(header_value(header, "SOPClassUID")),
        tag_of("ReferencedSOPInstanceUID"): uid_of(header_value(header, "SOPInstanceUID")),
    }


def _add_display(gsps: _Builder, header: Dataset, proto: _Prototypes) -> None:
    """Displayed Area, Modality LUT, Softcopy VOI LUT and Softcopy Presentation LUT."""
    size = [header_value(header, "Columns"), header_value(header, "Rows")]
    corner = DataElement(_CORNER, dictionary_VR(_CORNER), size)
    area = fresh_copy(proto.area, {_CORNER: corner.value})
    gsps.sequence(tag_of("DisplayedAreaSelectionSequence"), (area,))
    for element in _modality_lut(header):
        gsps.copy(element)
    voi = fresh_copy(_softcopy_voi(header), {})
    gsps.sequence(tag_of("SoftcopyVOILUTSequence"), (voi,))
    for element in _shape(_presentation_lut_shape(header)):
        gsps.copy(element)


_CORNER = tag_of("DisplayedAreaBottomRightHandCorner")


def _add_model(gsps: _Builder, *keywords: str) -> None:
    """The prototype's elements that depend on the model only (:data:`_MODEL`)."""
    for keyword in keywords:
        gsps.model(keyword)


#: The elements of a GSPS that depend on the model only (:func:`_add_model`), which the
#: prototypes' document holds (:attr:`_Prototypes.document`).
_MODEL = (
    "SeriesNumber", "Modality", "SeriesDescription", "Manufacturer", "ManufacturerModelName",
    "DeviceSerialNumber", "SoftwareVersions", "SOPClassUID", "InstanceNumber", "ContentLabel",
    "ContentDescription", "ContentCreatorName",
)  # fmt: skip


#: What highdicom's ``SOPClass`` sets from the source's identity, in its order.
_SOP_CLASS_IDENTITY = tuple(
    tag_of(keyword)
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
    )
)


_TYPE2_TAGS = frozenset(tag_of(keyword) for keyword in TYPE2_IDENTITY)


def _identity(header: Dataset, iod: _SourceIOD) -> dict[BaseTag, DataElement]:
    """Copies of what highdicom copies from the source's Patient, Study and Specimen modules,
    in its order, with :func:`source_header`'s empty type 2 attributes."""
    identity = {}
    present = header.keys()
    for tag in iod.copied_tags:
        if tag in present:
            identity[tag] = element = copy_element(header[tag])
            if tag in _TYPE2_TAGS and element.value is None:
                element.value = ""
        elif tag in _TYPE2_TAGS:
            identity[tag] = DataElement(tag, dictionary_VR(tag), "")
    return identity


def _file_meta(prototype: Dataset, sop_instance_uid: str) -> Dataset:
    """The prototype's file meta with this instance's UID.

    highdicom sets the group length to the length of the meta group it writes (group length
    element included); only the instance UID differs from the prototype's, so the length
    differs by the difference of their lengths padded to even.
    """
    meta = copy_item(prototype, MediaStorageSOPInstanceUID=sop_instance_uid)

    def padded(uid: str) -> int:
        return len(uid) + len(uid) % 2

    old = prototype.MediaStorageSOPInstanceUID
    meta.FileMetaInformationGroupLength = (
        prototype.FileMetaInformationGroupLength + padded(sop_instance_uid) - padded(old)
    )
    return meta


def _single_character_set(value: object) -> str:
    """The Specific Character Set as highdicom writes a single value without code extensions
    (anything else goes to highdicom)."""
    if not isinstance(value, str) or value.startswith("ISO 2022"):
        raise _Uncovered(f"Specific Character Set {value!r}")
    return str(hd.SpecificCharacterSetValues(value).value)


def _add_graphics(gsps: _Builder, report: Report, header: Dataset, proto: _Prototypes) -> None:
    """As :func:`_graphics` and highdicom: one group per found region, one annotation per
    layer used, and the layers used. The regions' items and the annotations holding them are
    made only when reached (:func:`~.shared.lazy_sequence`); written straight to DICOM, they
    are their prototypes' compiled bytes with the report's values
    (:meth:`_Prototypes.item_bytes`)."""
    labels = _present_labels(report)
    size = (header_value(header, "Columns"), header_value(header, "Rows"))
    objects: dict[str, tuple[list[DeferredCopy], list[DeferredCopy]]] = {
        name: ([], []) for name in proto.layers
    }
    groups = []
    for result in report.regions:
        if result.box is None:
            continue
        label = labels.get(result.region)
        values = _region_values(
            result.box, len(groups) + 1, tracking_uid(report, result.region),
            label or result.name, size,
        )  # fmt: skip
        items = proto.regions[result.region]
        group, graphic, text = (
            DeferredCopy(partial(_region_item, item, value), partial(proto.item_bytes, item, value))
            for item, value in zip(items, values, strict=True)
        )
        groups.append(group)
        graphics, texts = objects[FINDINGS_LAYER if label else ANATOMY_LAYER]
        graphics.append(graphic)
        texts.append(text)
    annotations = []
    for name, (graphics, texts) in objects.items():
        if not graphics:
            continue
        prototype = proto.annotations[name]
        (image,) = prototype.ReferencedImageSequence
        image = LazyCopy(image, _image_reference(header)).make()
        annotations.append(
            LazyCopy(
                prototype,
                {
                    tag_of("ReferencedImageSequence"): sequence_like(
                        prototype.ReferencedImageSequence, [image]
                    ),
                    tag_of("GraphicObjectSequence"): tuple(graphics),
                    tag_of("TextObjectSequence"): tuple(texts),
                },
            )
        )
    if groups:
        gsps.sequence(tag_of("GraphicGroupSequence"), tuple(groups))
    if annotations:
        layers = tuple(fresh_copy(proto.layers[a.item.GraphicLayer], {}) for a in annotations)
        gsps.sequence(tag_of("GraphicLayerSequence"), layers)
        gsps.sequence(tag_of("GraphicAnnotationSequence"), tuple(annotations))


def _region_values(
    box: BoundingBox, group_id: int, uid: str, label: str, size: tuple[int, int]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A found region's graphic group, box and label values by keyword, as :func:`_graphics`
    gives them to highdicom and pydicom converts them (the box's floats as highdicom's
    np.asarray(points, dtype=np.float64).flatten().tolist())."""
    columns, rows = size
    if min(box.x1, box.y1) < 0.0 or box.x2 > columns or box.y2 > rows:
        raise _Uncovered("a box outside the image")
    if "\\" in label:
        raise _Uncovered("a backslash in a label")  # highdicom refuses it (ST)
    points = box.polyline()
    uid = our_uid(uid)
    return (
        {"GraphicGroupID": group_id},
        {
            "NumberOfGraphicPoints": len(points),
            "GraphicData": [float(v) for point in points for v in point],
            "TrackingUID": uid,
            "GraphicGroupID": group_id,
        },
        {
            "UnformattedTextValue": label,
            "AnchorPoint": [box.x1, box.y1],
            "TrackingUID": uid,
            "GraphicGroupID": group_id,
        },
    )


def _region_item(prototype: Dataset, values: dict[str, Any]) -> Dataset:
    """A copy of a region's prototype item holding ``values`` (when it is reached)."""
    return copy_item(
        prototype,
        **{
            keyword: _floats(keyword, value) if type(value) is list else _ours(keyword, value)
            for keyword, value in values.items()
        },
    )


def _floats(keyword: str, values: list[Any]) -> DataElement | list[Any]:
    """An FL element of Python floats as pydicom's conversion makes it (a MultiValue of the same
    float objects) without checking each again, which costs a third of a box; other values
    (ints, numpy scalars) are left to pydicom.

    The one difference: the MultiValue converts values added to it later with ``float`` instead
    of pydicom's check.
    """
    if not all(type(value) is float for value in values):
        return values
    tag, vr = _tag_and_vr(keyword)
    return DataElement(tag, vr, MultiValue(float, values), already_converted=True)


def _set(gsps: _Builder, keyword: str, value: Any) -> None:
    """``gsps.<keyword> = value`` for a value of ours in pydicom's form (see :func:`_ours`)."""
    gsps.element(_ours(keyword, value))


def _put(dataset: Dataset, element: DataElement) -> None:
    """``dataset[element.tag] = element`` for a public element other than Pixel Data (all we
    set): ``Dataset.__setitem__`` only stores one that is not a sequence, after checks it
    passes by construction (pydicom 3.0; tests/test_gsps_fast.py holds the GSPS to
    highdicom's)."""
    if element.VR == "SQ":
        dataset[element.tag] = element  # Dataset also sets the sequence's parent
    else:
        dataset._dict[element.tag] = element


def _ours(keyword: str, value: Any) -> DataElement:
    """An element of a value we made, given in the form pydicom converts it to (an int, a str,
    a UID, a date or time, a Sequence) and valid by construction: pydicom's conversion would
    only check it again, which costs more than making the element."""
    tag, vr = _tag_and_vr(keyword)
    return DataElement(tag, vr, value, already_converted=True)


@lru_cache(maxsize=16)
def _tag_and_vr(keyword: str) -> tuple[BaseTag, str]:
    tag = tag_of(keyword)
    return tag, dictionary_VR(tag)


def _modality_lut(header: Dataset) -> Dataset:
    """The source's rescale as highdicom copies it from a single-frame image (a Modality LUT
    Sequence is not copied): highdicom's item, or an empty one without rescale."""
    has_slope, has_intercept = "RescaleSlope" in header, "RescaleIntercept" in header
    if has_slope != has_intercept:
        raise _Uncovered("a rescale slope without intercept or the other way round")
    if not has_intercept:
        return Dataset()
    rescale_type = header_value(header, "RescaleType", "US")
    intercept = header_value(header, "RescaleIntercept")
    return _rescale(intercept, header_value(header, "RescaleSlope"), rescale_type)


@lru_cache(maxsize=256, typed=True)
def _rescale(intercept: float, slope: float, rescale_type: str) -> hd.ModalityLUTTransformation:
    """highdicom's item, built once per distinct rescale."""
    return hd.ModalityLUTTransformation(
        rescale_intercept=intercept, rescale_slope=slope, rescale_type=rescale_type
    )


def _softcopy_voi(header: Dataset) -> hd.pr.SoftcopyVOILUTTransformation:
    """:func:`_voi`'s window, or the source's as highdicom copies it from a single-frame image."""
    ours = _full_range_window(header)
    if ours is not None:
        center, width = ours
        return _window((center,), (width,), (_FULL_RANGE,), None)
    if "VOILUTSequence" in header or ("WindowWidth" in header) != ("WindowCenter" in header):
        raise _Uncovered("a VOI LUT table, or a window center without width")

    def hashable(value: object) -> object:
        return tuple(value) if isinstance(value, MultiValue) else value

    return _window(
        hashable(header_value(header, "WindowCenter")),
        hashable(header_value(header, "WindowWidth")),
        hashable(header_value(header, "WindowCenterWidthExplanation")),
        header_value(header, "VOILUTFunction"),
    )


@lru_cache(maxsize=256, typed=True)
def _window(
    center: Any, width: Any, explanation: Any, function: Any
) -> hd.pr.SoftcopyVOILUTTransformation:
    """highdicom's item, built once per distinct window (read-only)."""
    item = hd.pr.SoftcopyVOILUTTransformation(
        window_center=center,
        window_width=width,
        window_explanation=explanation,
        voi_lut_function=function,
    )
    return read_only(item)


@lru_cache(maxsize=4)
def _shape(shape: hd.PresentationLUTShapeValues) -> hd.PresentationLUTTransformation:
    """highdicom's item, built once per shape."""
    return hd.PresentationLUTTransformation(presentation_lut_shape=shape)
