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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from highdicom.color import CIELabColor

from ..errors import ExportError
from ..vocab import FINDINGS
from ._dicom import (
    MANUFACTURER,
    append_ai_equipment,
    export_errors,
    not_for_diagnosis,
    software_versions,
    source_header,
)
from .uids import result_uid, series_uid, tracking_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..report import RegionResult, Report

__all__ = ["ANATOMY_LAYER", "CONTENT_LABEL", "FINDINGS_LAYER", "GSPS_SERIES_NUMBER", "render_gsps"]

FINDINGS_LAYER = "FINDINGS"
ANATOMY_LAYER = "ANATOMY"
#: Content Label (CS: capitals, digits, underscore, space; ≤ 16 characters).
CONTENT_LABEL = "AI_REGIONS"
#: Series number of anaxreport GSPS series (the SR series is 9901).
GSPS_SERIES_NUMBER = 9902

_WHAT = "GSPS"
_SHORT_TEXT = 1024  # ST: Unformatted Text Value


def render_gsps(report: Report) -> Dataset:
    """A GSPS of the source image with the found regions' boxes and labels.

    Raises :class:`~anaxreport.errors.ExportError` when the report has no source header or
    highdicom refuses the content.
    """
    header = source_header(report, _WHAT)
    if header.get("SamplesPerPixel", 1) != 1:
        raise ExportError(
            f"cannot write the {_WHAT} for SOP Instance UID {report.study.sop_instance_uid}: "
            "the source is not a grayscale image"
        )
    with export_errors(report, _WHAT):
        layers, annotations, groups = _graphics(report, header)
        gsps = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=[header],
            series_instance_uid=series_uid(report, "gsps"),
            series_number=GSPS_SERIES_NUMBER,
            sop_instance_uid=result_uid(report, "gsps"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=report.provenance.model_name[:64],
            software_versions=software_versions(report),
            # the trained model's identity; highdicom asks for a serial number
            device_serial_number=report.provenance.weights_sha256[:16],
            content_label=CONTENT_LABEL,
            content_description=not_for_diagnosis(report),
            graphic_annotations=annotations or None,
            graphic_layers=layers or None,
            graphic_groups=groups or None,
            voi_lut_transformations=_voi(header),
            presentation_lut_transformation=_presentation_lut(header),
            series_description=not_for_diagnosis(report),
        )
        _copy_body_part(gsps, header)
        append_ai_equipment(gsps, report)
    return gsps


def _copy_body_part(gsps: Dataset, header: Dataset) -> None:
    """General Series Body Part Examined and Laterality (type 2C, PS3.3 C.7.3.1) of the source.

    The chest is unpaired: with Body Part Examined present, Laterality may be absent; a source
    without either gets an empty Laterality ("unknown", which type 2C allows).
    """
    for keyword in ("BodyPartExamined", "Laterality"):
        if header.get(keyword):
            setattr(gsps, keyword, header[keyword].value)
    if not gsps.get("BodyPartExamined") and "Laterality" not in gsps:
        gsps.Laterality = ""


def _present_label(report: Report, result: RegionResult) -> str | None:
    """``"<region>: <finding> <p>, ..."`` for the present calls, None when there is none."""
    calls = [report.call(result.region, f) for f in FINDINGS]
    present = [f"{c.finding.name} {c.probability:.2f}" for c in calls if c.present]
    if not present:
        return None
    return f"{result.name}: {', '.join(present)}"[:_SHORT_TEXT]


def _graphics(
    report: Report, header: Dataset
) -> tuple[list[hd.pr.GraphicLayer], list[hd.pr.GraphicAnnotation], list[hd.pr.GraphicGroup]]:
    """The two layers, one annotation per non-empty layer, one group per found region."""
    layers = {
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
    objects: dict[str, tuple[list[hd.pr.GraphicObject], list[hd.pr.TextObject]]] = {
        name: ([], []) for name in layers
    }
    groups = []
    for result in report.regions:
        if result.box is None:
            continue
        group = hd.pr.GraphicGroup(len(groups) + 1, result.name)
        groups.append(group)
        label = _present_label(report, result)
        graphics, texts = objects[FINDINGS_LAYER if label else ANATOMY_LAYER]
        graphic, text = _box_and_label(report, result, label or result.name, group)
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
    report: Report, result: RegionResult, label: str, group: hd.pr.GraphicGroup
) -> tuple[hd.pr.GraphicObject, hd.pr.TextObject]:
    """The box as a closed POLYLINE and its label anchored at the box's top-left corner,
    both carrying the region's tracking identifier and UID (the same as in the SR)."""
    box = result.box
    if box is None:
        raise ValueError(f"region {result.name} has no box")
    uid = tracking_uid(report, result.region)
    graphic = hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(box.polyline(), dtype=np.float64),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        tracking_id=result.name,
        tracking_uid=uid,
        graphic_group=group,
    )
    text = hd.pr.TextObject(
        text_value=label,
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        anchor_point=(box.x1, box.y1),
        anchor_point_visible=False,
        tracking_id=result.name,
        tracking_uid=uid,
        graphic_group=group,
    )
    return graphic, text


def _voi(header: Dataset) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """None to let highdicom copy the source's window or VOI LUT; otherwise a linear window
    over the full stored range mapped through the source's rescale (PS3.3 C.11.2.1.2)."""
    if "WindowCenter" in header or "VOILUTSequence" in header:
        return None
    bits = int(header.get("BitsStored") or header.get("BitsAllocated") or 16)
    signed = int(header.get("PixelRepresentation") or 0) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(header.get("RescaleSlope") or 1.0)
    intercept = float(header.get("RescaleIntercept") or 0.0)
    lo, hi = sorted((low * slope + intercept, high * slope + intercept))
    # LINEAR maps [c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2] onto the output range.
    # One-item lists: highdicom 0.28 splits a plain str explanation into characters.
    return [
        hd.pr.SoftcopyVOILUTTransformation(
            window_center=[round((lo + hi) / 2 + 0.5, 4)],
            window_width=[round(hi - lo + 1, 4)],
            window_explanation=["FULL STORED RANGE"],
        )
    ]


def _presentation_lut(header: Dataset) -> hd.PresentationLUTTransformation:
    """INVERSE for MONOCHROME1 (GSPS output is MONOCHROME2 semantics), else IDENTITY."""
    shapes = hd.PresentationLUTShapeValues
    inverse = str(header.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    return hd.PresentationLUTTransformation(
        presentation_lut_shape=shapes.INVERSE if inverse else shapes.IDENTITY
    )
