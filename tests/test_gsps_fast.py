"""render_gsps builds the GSPS from copies of what highdicom built once: it must equal, element
for element (value types, order and file meta included), what highdicom's constructor makes, for
every sample and for the sources that take other branches, and share nothing mutable.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from io import BytesIO
from unittest import mock

import highdicom as hd
import numpy as np
import pydicom
import pytest
from _reports import SAMPLES, make_findings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from anaxreport import Reporter
from anaxreport.errors import ExportError
from anaxreport.geometry import BoundingBox
from anaxreport.render import gsps
from anaxreport.render._dicom import TYPE2_IDENTITY
from anaxreport.render.encode import encode
from anaxreport.report import Report
from anaxreport.rules import apply_rules

#: Creation dates and times: the only elements that differ between two renderings.
VOLATILE = {0x00080012, 0x00080013, 0x00700082, 0x00700083, 0x0018A002}
ALL_REGIONS = tuple(r.name for r in make_findings().regions)


def differences(a: Dataset, b: Dataset, path: str = "") -> list[str]:
    """Where ``b`` differs from ``a``: class, element order, VR, value types and values, the
    undefined length flags, recursively (creation times left out)."""
    found = []
    if (type(a), a.is_undefined_length_sequence_item) != (
        type(b),
        b.is_undefined_length_sequence_item,
    ):
        found.append(f"{path}: {type(a).__name__} != {type(b).__name__} or undefined length")
    keys_a, keys_b = ([t for t in list(ds.keys()) if t not in VOLATILE] for ds in (a, b))
    if keys_a != keys_b:
        return [*found, f"{path}: elements {keys_a} != {keys_b}"]
    for tag in keys_a:
        x, y = a[tag], b[tag]
        where = f"{path}/{x.keyword or tag}"
        if _kind(x) != _kind(y):
            found.append(f"{where}: {_kind(x)} != {_kind(y)}")
        elif isinstance(x.value, Sequence):
            if len(x.value) != len(y.value):
                found.append(f"{where}: {len(x.value)} != {len(y.value)} items")
            for i, (item_a, item_b) in enumerate(zip(x.value, y.value, strict=False)):
                found += differences(item_a, item_b, f"{where}[{i}]")
        elif x.value != y.value:
            found.append(f"{where}: {x.value!r} != {y.value!r}")
    return found


def _kind(element: DataElement) -> tuple:
    """VR, undefined length flag and value type (and the types of multiple values)."""
    value = element.value
    items = [type(v) for v in value] if isinstance(value, MultiValue) else []
    return element.VR, element.is_undefined_length, type(value), items


def file_differences(a: Dataset, b: Dataset) -> list[str]:
    found = differences(a, b, "gsps") + differences(a.file_meta, b.file_meta, "file meta")
    return found if a.preamble == b.preamble else [*found, "preamble"]


def fast(report: Report) -> Dataset:
    """render_gsps, which must not need highdicom's constructor for this report."""
    with mock.patch.object(gsps, "_render_gsps_highdicom", side_effect=AssertionError("slow")):
        return gsps.render_gsps(report)


def assert_equal_to_highdicom(report: Report) -> None:
    assert file_differences(gsps._render_gsps_highdicom(report), fast(report)) == []


# --- every sample through the model ---------------------------------------------------------


@pytest.fixture(scope="module")
def reporter() -> Reporter:
    return Reporter.from_pretrained()


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.dcm")), ids=lambda p: p.stem)
def test_samples_equal_highdicom(reporter, path):
    assert_equal_to_highdicom(reporter.run(path))


# --- sources and reports that take other branches --------------------------------------------


def _with_header(report: Report, **changes: object) -> Report:
    """``report`` made from a changed copy of its source header (None deletes)."""
    header = copy.deepcopy(report.header)
    for keyword, value in changes.items():
        if value is not None:
            setattr(header, keyword, value)
        elif keyword in header:
            delattr(header, keyword)
    return apply_rules(dataclasses.replace(report.source, header=header))


CASES = {
    "no region found": lambda: apply_rules(make_findings(missing=ALL_REGIONS)),
    "one region missing, MONOCHROME1, no window, rescale": lambda: apply_rules(
        make_findings(
            {("right costophrenic angle", "pleural effusion"): 0.93},
            sample="pa_effusion_right",
            missing=("left costophrenic angle",),
        )
    ),
    "MONOCHROME2 without window or rescale": lambda: apply_rules(
        make_findings(
            {("left lower lung zone", "atelectasis"): 0.84}, sample="ap_atelectasis_bibasilar"
        )
    ),
    "nearly every region on FINDINGS": lambda: apply_rules(make_findings(background=0.9)),
    "MONOCHROME1 with window": lambda: apply_rules(
        make_findings({("right lung", "pneumothorax"): 0.9}, sample="pa_pneumothorax_monochrome1")
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cases_equal_highdicom(case):
    assert_equal_to_highdicom(CASES[case]())


def test_anonymised_source_equals_highdicom(tmp_path):
    ds = pydicom.dcmread(SAMPLES / "pa_normal.dcm")
    for keyword in TYPE2_IDENTITY:
        delattr(ds, keyword)
    source = tmp_path / "anonymised.dcm"
    ds.save_as(source, enforce_file_format=True)
    keep = ("right lung", "left lung", "trachea")
    findings = make_findings(
        {("right lung", "pneumothorax"): 0.9},
        source=source,
        missing=tuple(n for n in ALL_REGIONS if n not in keep),
    )
    assert_equal_to_highdicom(apply_rules(findings))


def test_empty_identity_values_equal_highdicom():
    report = _with_header(apply_rules(make_findings()), PatientSex=None, StudyID=None)
    report.header["PatientName"].value = None  # present without a value
    assert_equal_to_highdicom(report)


def _lut() -> list[Dataset]:
    """A LUT Sequence of one 4-entry table."""
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 16]
    lut.add_new(0x00283006, "OW", np.array([0, 100, 200, 4095], dtype="<u2").tobytes())
    return [lut]


HEADER_CHANGES = {
    "a window with two values and explanations": {
        "WindowCenter": [1024.0, 512.0],
        "WindowWidth": [2048.0, 1024.0],
        "WindowCenterWidthExplanation": ["WIDE", "NARROW"],
        "VOILUTFunction": "SIGMOID",
    },
    "a rescale without type": {"RescaleSlope": 2.0, "RescaleIntercept": -10.0, "RescaleType": None},
    "UTF-8": {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "Ünal^Ayşe"},
    "no character set": {"SpecificCharacterSet": None},
    "no body part": {"BodyPartExamined": None},
    "a window width without center": {"WindowCenter": None, "WindowWidth": 100.0},
    "a laterality": {"Laterality": "R"},
    "DX": {"SOPClassUID": pydicom.uid.DigitalXRayImageStorageForPresentation},
    "a Modality LUT table (not copied)": {"ModalityLUTSequence": _lut()},
}


@pytest.mark.parametrize("change", list(HEADER_CHANGES))
def test_header_variants_equal_highdicom(change):
    report = apply_rules(make_findings({("trachea", "pneumothorax"): 0.7}))
    assert_equal_to_highdicom(_with_header(report, **HEADER_CHANGES[change]))


UNCOVERED = {
    "a VOI LUT table": {"VOILUTSequence": _lut()},
    "a character set with code extensions": {
        "SpecificCharacterSet": ["ISO 2022 IR 6", "ISO 2022 IR 100"]
    },
    "an empty character set": {"SpecificCharacterSet": ["", "ISO 2022 IR 87"]},
    "a rescale slope without intercept": {"RescaleSlope": 2.0, "RescaleIntercept": None},
    "a multi-frame IOD": {"SOPClassUID": pydicom.uid.EnhancedCTImageStorage},
}


@pytest.mark.parametrize("change", list(UNCOVERED))
def test_uncovered_sources_go_to_highdicom(change):
    """Sources the copies do not reproduce exactly get highdicom's GSPS (or its error)."""
    report = _with_header(
        apply_rules(make_findings(sample="pa_effusion_right")), **UNCOVERED[change]
    )
    try:
        reference: Dataset | ExportError = gsps._render_gsps_highdicom(report)
    except ExportError as error:
        reference = error
    highdicom_path = mock.patch.object(
        gsps, "_render_gsps_highdicom", wraps=gsps._render_gsps_highdicom
    )
    with highdicom_path as slow:
        if isinstance(reference, ExportError):
            with pytest.raises(ExportError) as made:
                gsps.render_gsps(report)
            assert str(made.value) == str(reference)
        else:
            assert file_differences(reference, gsps.render_gsps(report)) == []
    slow.assert_called_once()


def test_a_box_outside_the_image_gets_highdicom_s_error():
    findings = make_findings(missing=ALL_REGIONS[1:])
    result = findings.regions[0]
    width = findings.header.Columns
    outside = dataclasses.replace(result, box=BoundingBox(10.0, 10.0, width + 5.0, 20.0))
    report = apply_rules(dataclasses.replace(findings, regions=(outside, *findings.regions[1:])))
    with pytest.raises(ExportError, match="outside the valid range"):
        gsps.render_gsps(report)


@pytest.mark.parametrize(
    "sop_class",
    [
        pydicom.uid.ComputedRadiographyImageStorage,
        pydicom.uid.DigitalXRayImageStorageForPresentation,
        pydicom.uid.SecondaryCaptureImageStorage,
        pydicom.uid.CTImageStorage,
    ],
)
def test_copied_attributes_are_those_highdicom_copies_in_its_order(sop_class):
    """The cached list of the source's Patient, Study and Specimen attributes is what highdicom
    copies, in its order (a source holding every one of them)."""
    copied = gsps._source_iod(str(sop_class)).copied_tags
    source = Dataset()
    source.SOPClassUID = sop_class
    source.SOPInstanceUID = "2.25.1"
    for tag in copied:
        source.add_new(tag, pydicom.datadict.dictionary_VR(tag), None)
    target = hd.SOPClass.__new__(hd.SOPClass)
    Dataset.__init__(target)
    target.copy_patient_and_study_information(source)
    target.copy_specimen_information(source)
    assert list(target.keys()) == list(copied)


# --- nothing shared ------------------------------------------------------------------------


def _without_times(dataset: Dataset) -> dict:
    """The GSPS as JSON without the creation times."""
    volatile = {f"{tag:08X}" for tag in VOLATILE}

    def clean(node):
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if k not in volatile}
        return [clean(v) for v in node] if isinstance(node, list) else node

    return clean(dataset.to_json_dict())


def test_gsps_rendering_shares_no_mutable_state_between_reports():
    """Rendering B, or editing A's GSPS in place down to the leaves, changes neither what A nor
    what B renders to (no item, element or list is shared with the prototypes or another
    GSPS)."""
    a = apply_rules(make_findings({("right lung", "pneumothorax"): 0.9}))
    b = apply_rules(
        make_findings({("left lower lung zone", "atelectasis"): 0.8}, sample="pa_effusion_right")
    )
    first = a.to_gsps()
    want_a = _without_times(first)
    other = b.to_gsps()
    want_b = _without_times(other)
    assert want_a != want_b
    annotation = first.GraphicAnnotationSequence[0]
    graphic = annotation.GraphicObjectSequence[0]
    text = annotation.TextObjectSequence[0]
    graphic.GraphicData.append(1.0)
    graphic.GraphicType = "POINT"
    text.AnchorPoint[0] = 3.0
    text.UnformattedTextValue = "edited"
    annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    annotation.GraphicObjectSequence.pop()
    first.GraphicLayerSequence[0].GraphicLayerRecommendedDisplayCIELabValue[0] = 1
    first.GraphicLayerSequence.pop()
    first.GraphicGroupSequence[0].GraphicGroupLabel = "edited"
    first.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence.pop()
    first.ContributingEquipmentSequence[-1].SoftwareVersions.append("x")
    first.ReferencedSeriesSequence[0].ReferencedImageSequence.pop()
    first.DisplayedAreaSelectionSequence[0].DisplayedAreaTopLeftHandCorner[0] = 5
    first.SoftcopyVOILUTSequence[0].WindowCenter = 1.0
    first.SoftwareVersions.append("x")
    first.file_meta.ImplementationVersionName = "edited"
    assert _without_times(a.to_gsps()) == want_a
    assert _without_times(b.to_gsps()) == want_b
    assert _without_times(other) == want_b
    assert a.to_gsps().file_meta == gsps._render_gsps_highdicom(a).file_meta


# --- the file, written without making the data set -----------------------------------------


def _written_cases() -> dict[str, Report]:
    cases = {name: make() for name, make in CASES.items()}
    for change, values in HEADER_CHANGES.items():
        report = apply_rules(make_findings({("trachea", "pneumothorax"): 0.7}))
        cases[change] = _with_header(report, **values)
    return cases


@pytest.mark.parametrize("case", list(_written_cases()))
def test_written_gsps_is_the_encoded_data_set(case, stopped_clock, caplog):
    """write_gsps writes the file from the same steps without making the data set: the bytes
    of encoding what render_gsps makes, for every branch the copies cover."""
    report = _written_cases()[case]
    with caplog.at_level(logging.DEBUG, logger="anaxreport.render.gsps"):
        written = gsps.write_gsps(report)
    assert "written from its data set" not in caplog.text
    assert written == encode(gsps.render_gsps(report))
    assert written == _pydicom_bytes(gsps.render_gsps(report))


@pytest.mark.parametrize("change", [*UNCOVERED, "an undefined length patient sequence"])
def test_written_gsps_of_what_the_copies_do_not_cover_is_the_long_way(change, caplog):
    """Sources that go to highdicom (or whose elements the prototypes' document holds
    otherwise) get the encoded data set, or its error (highdicom's own clock: the creation
    times left out)."""
    report = apply_rules(make_findings(sample="pa_effusion_right"))
    if change in UNCOVERED:
        report = _with_header(report, **UNCOVERED[change])
    else:
        header = copy.deepcopy(report.header)
        header.OtherPatientIDsSequence = [Dataset()]
        header.OtherPatientIDsSequence[0].PatientID = "other"
        header["OtherPatientIDsSequence"].is_undefined_length = True
        report = apply_rules(dataclasses.replace(report.source, header=header))
    try:
        expected: bytes | ExportError = encode(gsps.render_gsps(report))
    except ExportError as error:
        expected = error
    if isinstance(expected, ExportError):
        with pytest.raises(ExportError) as written:
            gsps.write_gsps(report)
        assert str(written.value) == str(expected)
        return
    with caplog.at_level(logging.DEBUG, logger="anaxreport.render.gsps"):
        written = gsps.write_gsps(report)
    assert "written from its data set" in caplog.text
    read = [pydicom.dcmread(BytesIO(data)) for data in (written, expected)]
    assert differences(*read) == differences(read[0].file_meta, read[1].file_meta) == []


def test_written_gsps_without_header_raises_render_gsps_s_error():
    report = apply_rules(dataclasses.replace(make_findings(), header=None))
    with pytest.raises(ExportError) as expected:
        gsps.render_gsps(report)
    with pytest.raises(ExportError) as written:
        gsps.write_gsps(report)
    assert str(written.value) == str(expected.value)


def _pydicom_bytes(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
