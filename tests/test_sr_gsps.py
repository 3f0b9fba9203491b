"""DICOM SR (TID 1500) and GSPS writers on real sample images: valid by the referees
(dciodvfy, dsrdump), read back with highdicom/pydicom equal to the report, and in the source's
study and patient.

Each case is rendered once per module (an SR takes about a second with highdicom) and shared.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import highdicom as hd
import numpy as np
import pydicom
import pytest
from _reports import SAMPLES, make_findings
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.valuerep import format_number_as_ds

from anaxreport import Reporter
from anaxreport.errors import ExportError
from anaxreport.render import sr as sr_module
from anaxreport.render._dicom import (
    MANUFACTURER,
    TYPE2_IDENTITY,
    append_ai_equipment,
    coded,
    coding_schemes,
    device_uid,
    not_for_diagnosis,
    software_versions,
    source_header,
)
from anaxreport.render.encode import encode
from anaxreport.render.gsps import ANATOMY_LAYER, FINDINGS_LAYER
from anaxreport.render.uids import result_uid, series_uid, tracking_uid
from anaxreport.report import Report
from anaxreport.rules import apply_rules
from anaxreport.vocab import (
    ABSENT,
    BOUNDED_BY,
    FINDINGS,
    PRESENT,
    PROCEDURE,
    REGIONS,
    Laterality,
)

IDENTITY = ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyID")
ANONYMISED = TYPE2_IDENTITY  # what anonymisers blank or drop and highdicom still reads


def _hand_made(name: str) -> Report:
    if name == "normal":  # pa_normal: MONOCHROME1 DX, nothing present
        return apply_rules(make_findings())
    if name == "bilateral":  # MONOCHROME2 CR without window: several findings, both sides
        return apply_rules(
            make_findings(
                {
                    ("right lower lung zone", "atelectasis"): 0.91,
                    ("left lower lung zone", "atelectasis"): 0.84,
                    ("right costophrenic angle", "pleural effusion"): 0.72,
                    ("left costophrenic angle", "pleural effusion"): 0.66,
                    ("cardiac silhouette", "enlarged cardiac silhouette"): 0.88,
                },
                sample="ap_atelectasis_bibasilar",
            )
        )
    if name == "missing":  # MONOCHROME1 CR, rescale slope 0.5, no window; one region not found
        return apply_rules(
            make_findings(
                {("right costophrenic angle", "pleural effusion"): 0.93},
                sample="pa_effusion_right",
                missing=("left costophrenic angle",),
            )
        )
    raise ValueError(name)


CASES = {
    "normal": "pa_normal",
    "bilateral": "ap_atelectasis_bibasilar",
    "missing": "pa_effusion_right",
    "model_effusion": "pa_effusion_right",
    "model_pneumothorax": "pa_pneumothorax_monochrome1",
}


class Rendered(NamedTuple):
    report: Report
    source: Path
    sr_path: Path
    gsps_path: Path
    sr: Dataset


@pytest.fixture(scope="module")
def reporter() -> Reporter:
    return Reporter.from_pretrained()


@pytest.fixture(scope="module")
def rendered(reporter, tmp_path_factory):
    """case name -> its report, rendered SR and GSPS and the files they were saved to."""
    folder = tmp_path_factory.mktemp("sr_gsps")
    cache: dict[str, Rendered] = {}

    def get(case: str) -> Rendered:
        if case not in cache:
            source = SAMPLES / f"{CASES[case]}.dcm"
            report = reporter.run(source) if case.startswith("model") else _hand_made(case)
            sr, gsps = report.to_sr(), report.to_gsps()
            sr_path, gsps_path = folder / f"{case}.sr.dcm", folder / f"{case}.gsps.dcm"
            sr.save_as(sr_path, enforce_file_format=True)
            gsps.save_as(gsps_path, enforce_file_format=True)
            cache[case] = Rendered(report, source, sr_path, gsps_path, sr)
        return cache[case]

    return get


@pytest.fixture(scope="module")
def read_back(rendered):
    """case name -> the SR file read back by highdicom (cached)."""
    cache: dict[str, hd.sr.Comprehensive3DSR] = {}

    def get(case: str) -> hd.sr.Comprehensive3DSR:
        if case not in cache:
            cache[case] = hd.sr.srread(rendered(case).sr_path)
        return cache[case]

    return get


# --- validity -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_sr_and_gsps_pass_the_referees(rendered, case, dciodvfy, dsrdump):
    r = rendered(case)
    assert dciodvfy(r.sr_path) == []
    assert dsrdump(r.sr_path) == []
    assert dciodvfy(r.gsps_path) == []


def test_the_cases_cover_what_they_claim(rendered):
    assert not rendered("normal").report.present_calls()
    bilateral = rendered("bilateral").report
    assert any(statement.laterality == "bilateral" for statement in bilateral.findings)
    assert not rendered("missing").report.region("left costophrenic angle").found
    for case in ("model_effusion", "model_pneumothorax"):
        assert all(r.found for r in rendered(case).report.regions)
    assert rendered("model_effusion").report.present_calls()


# --- SR content ----------------------------------------------------------------------------


def _group_values(group: Dataset) -> tuple[dict[str, str], dict[str, float]]:
    """A group's CODE values and NUM values by concept code value (plain pydicom: highdicom's
    get_measurements() builds a template per item and is slow)."""
    calls, probabilities = {}, {}
    for item in group.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeValue
        if item.ValueType == "CODE" and item.RelationshipType == "CONTAINS":
            calls[name] = item.ConceptCodeSequence[0].CodeValue
        elif item.ValueType == "NUM":
            value = item.MeasuredValueSequence[0]
            assert value.MeasurementUnitsCodeSequence[0].CodeValue == "1"  # UCUM no units
            probabilities[name] = float(value.FloatingPointValue)
    return calls, probabilities


#: Reading back with highdicom takes ~1 s per SR: the cases that differ in what they encode
#: (several present on both sides, a region not found, the real model).
ROUND_TRIP = ("bilateral", "missing", "model_effusion")


@pytest.mark.parametrize("case", ROUND_TRIP)
def test_sr_groups_read_back_equal_the_report(rendered, read_back, case):
    report = rendered(case).report
    groups = read_back(case).content.get_planar_roi_measurement_groups()
    found = [r for r in report.regions if r.found]
    assert [g.tracking_identifier for g in groups] == [r.name for r in found]
    for group, result in zip(groups, found, strict=True):
        region = result.region
        assert group.tracking_uid == tracking_uid(report, region)
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(group.roi.value, np.array(result.box.polyline()), atol=1e-3)
        (site,) = group.finding_sites
        assert (site.value.value, site.value.scheme_designator) == (
            region.site.value,
            region.site.scheme,
        )
        if region.laterality is Laterality.UNPAIRED:
            assert site.laterality is None
        else:
            assert site.laterality.value == region.laterality.value.value
        if region.modifier is not None:
            assert site.topographical_modifier.value == region.modifier.value
        calls, probabilities = _group_values(group[0])
        for f in FINDINGS:
            expected = PRESENT if report.call(region, f).present else ABSENT
            assert calls[f.code.value] == expected.value, (region.name, f.name)
            assert probabilities[f.code.value] == pytest.approx(result.probability(f), abs=1e-6)


def test_sr_carries_impression_provenance_and_missing_regions(rendered, read_back):
    r = rendered("missing")
    texts = _sr_texts(r.sr)
    assert texts["Impression"] == list(r.report.impression)
    provenance, missing = texts["Comment"]
    assert r.report.provenance.model_name in provenance
    assert "Not for diagnostic use" in provenance
    assert "left costophrenic angle" in missing
    groups = read_back("missing").content.get_planar_roi_measurement_groups()
    assert "left costophrenic angle" not in [g.tracking_identifier for g in groups]


def _sr_texts(sr: Dataset) -> dict[str, list[str]]:
    """Concept name meaning -> TEXT values of the root's Qualitative Evaluations container."""
    (container,) = [
        item
        for item in sr.ContentSequence
        if item.ValueType == "CONTAINER"
        and item.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
    ]
    texts: dict[str, list[str]] = {}
    for item in container.ContentSequence:
        texts.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item.TextValue)
    return texts


# --- identity, series, UIDs, provenance -------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_sr_and_gsps_are_in_the_source_study_in_new_series(rendered, case):
    r = rendered(case)
    source = pydicom.dcmread(r.source, stop_before_pixels=True)
    for kind, path in (("sr", r.sr_path), ("gsps", r.gsps_path)):
        ds = pydicom.dcmread(path)
        for keyword in IDENTITY:
            assert ds[keyword].value == source[keyword].value, keyword
        assert ds.SeriesInstanceUID == series_uid(r.report, kind) != source.SeriesInstanceUID
        assert ds.SOPInstanceUID == result_uid(r.report, kind)
        assert ds.Manufacturer == "anaxreport"
        assert "not for diagnostic use" in ds.SeriesDescription
        assert len(ds.SeriesDescription) <= 64
        ai = ds.ContributingEquipmentSequence[-1]
        purpose = ai.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("Newcode1", "99IHE")
        assert ai.ManufacturerModelName == r.report.provenance.model_name
        assert r.report.provenance.model_version in ai.SoftwareVersions
        assert ai.DeviceUID.startswith("2.25.")
    sr = pydicom.dcmread(r.sr_path)
    assert sr.VerificationFlag == "UNVERIFIED"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    image = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID


def _few_regions(*found: str, **kwargs) -> Report:
    """A report where only ``found`` regions have boxes (an SR of a few groups is fast)."""
    names = [r.name for r in make_findings().regions]
    return apply_rules(make_findings(missing=tuple(n for n in names if n not in found), **kwargs))


def test_sr_uids_are_deterministic_and_follow_the_thresholds():
    findings = _few_regions("right lung", "cardiac silhouette").source
    first, again = apply_rules(findings).to_sr(), apply_rules(findings).to_sr()
    assert again.SOPInstanceUID == first.SOPInstanceUID
    assert again.SeriesInstanceUID == first.SeriesInstanceUID
    assert _group_uids(again) == _group_uids(first)
    stricter = apply_rules(findings, thresholds={"pleural effusion": 0.7}).to_sr()
    assert stricter.SOPInstanceUID != first.SOPInstanceUID
    assert stricter.SeriesInstanceUID == first.SeriesInstanceUID  # same study and model
    assert set(_group_uids(stricter)).isdisjoint(_group_uids(first))


def _group_uids(sr: Dataset) -> list[str]:
    """The tracking UIDs of the measurement groups, in order (plain pydicom walk)."""
    (container,) = [
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    return [
        item.UID
        for group in container.ContentSequence
        for item in group.ContentSequence
        if item.ValueType == "UIDREF"
    ]


# --- anonymised input ----------------------------------------------------------------------


def test_anonymised_input_still_gives_valid_objects(tmp_path, dciodvfy, dsrdump):
    ds = pydicom.dcmread(SAMPLES / "pa_normal.dcm")
    for keyword in ANONYMISED:
        delattr(ds, keyword)
    source = tmp_path / "anonymised.dcm"
    ds.save_as(source, enforce_file_format=True)
    report = _few_regions(
        "right lung",
        "left lung",
        "trachea",
        probabilities={("right lung", "pneumothorax"): 0.9},
        source=source,
    )
    header = copy.deepcopy(report.header)
    for kind, dataset in (("sr", report.to_sr()), ("gsps", report.to_gsps())):
        path = tmp_path / f"out.{kind}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        assert dciodvfy(path) == [], kind
        assert dataset.PatientID == "" and dataset.AccessionNumber == ""
        assert dataset.StudyInstanceUID == ds.StudyInstanceUID
    assert dsrdump(tmp_path / "out.sr.dcm") == []
    assert report.header == header
    assert all(keyword not in report.header for keyword in ANONYMISED)


# --- GSPS content ------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_gsps_draws_the_boxes_on_two_layers(rendered, case):
    r = rendered(case)
    gsps = pydicom.dcmread(r.gsps_path)
    report = r.report
    present = {c.region.name for c in report.present_calls()}
    expected = {
        FINDINGS_LAYER: [x for x in report.regions if x.found and x.name in present],
        ANATOMY_LAYER: [x for x in report.regions if x.found and x.name not in present],
    }
    layers = {a.GraphicLayer: a for a in gsps.GraphicAnnotationSequence}
    assert set(layers) == {name for name, regions in expected.items() if regions}
    assert {item.GraphicLayer for item in gsps.GraphicLayerSequence} == set(layers)
    for name, annotation in layers.items():
        regions = expected[name]
        graphics = annotation.GraphicObjectSequence
        texts = annotation.TextObjectSequence
        assert len(graphics) == len(texts) == len(regions)
        for graphic, text, result in zip(graphics, texts, regions, strict=True):
            assert graphic.GraphicType == "POLYLINE"
            assert graphic.GraphicAnnotationUnits == "PIXEL"
            assert graphic.TrackingUID == tracking_uid(report, result.region)
            points = np.array(graphic.GraphicData).reshape(-1, 2)
            np.testing.assert_allclose(points, np.array(result.box.polyline()), atol=1e-3)
            label = text.UnformattedTextValue
            assert label.startswith(result.name)
            assert text.TrackingUID == graphic.TrackingUID
            assert text.GraphicGroupID == graphic.GraphicGroupID
            calls = [c for c in report.present_calls() if c.region is result.region]
            assert all(f"{c.finding.name} {c.probability:.2f}" in label for c in calls)
            if name == ANATOMY_LAYER:
                assert label == result.name
        ref = annotation.ReferencedImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == report.study.sop_instance_uid


@pytest.mark.parametrize("case", list(CASES))
def test_gsps_grayscale_pipeline_shows_the_image_the_right_way_round(rendered, case):
    r = rendered(case)
    gsps = pydicom.dcmread(r.gsps_path)
    source = pydicom.dcmread(r.source, stop_before_pixels=True)
    inverse = source.PhotometricInterpretation == "MONOCHROME1"
    assert gsps.PresentationLUTShape == ("INVERSE" if inverse else "IDENTITY")
    voi = gsps.SoftcopyVOILUTSequence[0]
    if "WindowCenter" in source:
        assert float(voi.WindowCenter) == float(source.WindowCenter)
        assert float(voi.WindowWidth) == float(source.WindowWidth)
    else:  # a linear window over the whole stored range, through the rescale
        slope = float(source.get("RescaleSlope", 1))
        intercept = float(source.get("RescaleIntercept", 0))
        lowest, highest = intercept, (2**source.BitsStored - 1) * slope + intercept
        center, width = float(voi.WindowCenter), float(voi.WindowWidth)
        assert center - 0.5 - (width - 1) / 2 == pytest.approx(lowest)
        assert center - 0.5 + (width - 1) / 2 == pytest.approx(highest)


# --- errors -----------------------------------------------------------------------------


def test_a_report_without_header_raises_export_error():
    findings = dataclasses.replace(make_findings(), header=None)
    report = apply_rules(findings)
    for render in (report.to_sr, report.to_gsps):
        with pytest.raises(ExportError) as info:
            render()
        message = str(info.value)
        assert report.study.sop_instance_uid in message
        assert "\n" not in message


def test_highdicom_failures_become_one_line_export_errors():
    findings = _few_regions("trachea").source
    header = copy.deepcopy(findings.header)
    del header.StudyInstanceUID
    report = apply_rules(dataclasses.replace(findings, header=header))
    for render in (report.to_sr, report.to_gsps):
        with pytest.raises(ExportError, match=report.study.sop_instance_uid) as info:
            render()
        assert "\n" not in str(info.value)
        assert info.value.__cause__ is not None


def test_no_region_found_gives_no_sr_but_an_empty_gsps(tmp_path, dciodvfy):
    report = apply_rules(make_findings(missing=tuple(r.name for r in make_findings().regions)))
    with pytest.raises(ExportError, match="no region was found"):
        report.to_sr()
    path = tmp_path / "empty.gsps.dcm"
    report.to_gsps().save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []


def _without_timestamps(sr: Dataset) -> dict:
    """The SR as JSON without the creation times that differ between two renderings."""
    volatile = {"00080012", "00080013", "00080023", "00080033", "0018A002"}

    def clean(node):
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if k not in volatile}
        return [clean(v) for v in node] if isinstance(node, list) else node

    return clean(sr.to_json_dict())


def test_sr_rendering_shares_no_mutable_state_between_reports():
    """render_sr reuses cached highdicom-built items (read-only) and encodes their kept bytes:
    rendering B, or editing A's document (its sequences and elements; the shared items refuse),
    must not change what A renders and encodes to."""
    a = _few_regions("right lung", "trachea", probabilities={("right lung", "pneumothorax"): 0.9})
    b = _few_regions(
        "right lung",
        "cardiac silhouette",
        probabilities={("right lung", "pneumothorax"): 0.2, ("right lung", "atelectasis"): 0.8},
        sample="pa_effusion_right",
    )
    first = a.to_sr()
    want, want_bytes = _without_timestamps(first), encode(first)
    other = b.to_sr()
    assert _without_timestamps(other) != want
    (container,) = [
        item
        for item in first.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    group = container.ContentSequence[0]
    num = next(item for item in group.ContentSequence if item.ValueType == "NUM")
    num.ConceptNameCodeSequence.pop()  # edit A's sequences in place, down to the leaves
    num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence.pop()
    num.MeasuredValueSequence[0].NumericValue = "0.5"
    num["ValueType"].value = "TEXT"  # and its own elements
    group.ContentSequence.pop()
    container.ContentSequence.pop()
    call = next(item for item in group.ContentSequence if item.ValueType == "CODE")
    shared = [  # items every report shares: read-only, whatever the way in
        lambda: setattr(call, "RelationshipType", "HAS PROPERTIES"),
        lambda: setattr(call["ValueType"], "value", "TEXT"),
        lambda: call.ConceptCodeSequence.pop(),
        lambda: setattr(call.ConceptCodeSequence[0], "CodeValue", "1"),
        lambda: setattr(first.ContentSequence[0], "ValueType", "TEXT"),
        lambda: first.CodingSchemeIdentificationSequence[0].pop(Tag("CodingSchemeName")),
    ]
    for change in shared:
        with pytest.raises(TypeError, match="read-only"):
            change()
    edited = encode(first)
    assert edited != want_bytes
    assert edited == _pydicom_bytes(first)  # the encoder sees every edit
    again = a.to_sr()
    assert _without_timestamps(again) == want
    assert encode(_same_times(again, first)) == want_bytes  # its edits are in nested items
    assert _without_timestamps(b.to_sr()) == _without_timestamps(other)


def _pydicom_bytes(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


#: Elements that change from one rendering to the next (creation times), by keyword.
_TIMES = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _same_times(dataset: Dataset, like: Dataset) -> Dataset:
    """``dataset`` with the creation times of ``like`` (for byte comparisons)."""
    for keyword in _TIMES:
        setattr(dataset, keyword, like[keyword].value)
    for mine, theirs in zip(
        dataset.ContributingEquipmentSequence, like.ContributingEquipmentSequence, strict=True
    ):
        if "ContributionDateTime" in theirs and "ContributionDateTime" in mine:
            mine.ContributionDateTime = theirs.ContributionDateTime
    return dataset


def test_probabilities_are_written_as_pydicom_formats_decimal_strings():
    """The groups' inline DS text of a probability is pydicom's, at the edges of its range."""
    rng = np.random.default_rng(11)
    values = [0.0, 1.0, 0.5, 0.001, 0.000999999, 0.0010000001, 1e-5, 1 - 1e-16, 0.1 + 0.2]
    values += [float(v) for v in rng.random(2000)] + [float(v) for v in rng.random(200) / 1e3]
    values += [float(v) for v in np.float32(rng.random(200))]  # float32 probabilities, widened
    assert sr_module._decimal_strings(values) == [format_number_as_ds(v) for v in values]
    with pytest.raises(ValueError):
        sr_module._decimal_strings([0.5, float("nan")])


def test_sr_groups_encode_the_same_made_or_not():
    """The measurement groups are made only when reached: written unmade, made and copied,
    the bytes are pydicom's of the made document."""
    sr = _few_regions("right lung", "cardiac silhouette", "trachea").to_sr()
    unmade = encode(sr)
    made = copy.deepcopy(sr)  # reaches every item
    assert encode(made) == unmade == _pydicom_bytes(sr) == encode(sr)


def _naive_sr(report: Report, texts: list[tuple[Dataset, str]]) -> Dataset:
    """The SR built the plain way, highdicom making every item (about a second for a whole
    report: few regions here), with the qualitative evaluations' ``texts`` given."""
    header = source_header(report, "SR")
    p = report.provenance
    source = hd.sr.SourceImageForRegion.from_source_image(header)
    groups = [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=tracking_uid(report, r.region), identifier=r.name
            ),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array(r.box.polyline(), dtype=np.float64),
                source_image=source,
            ),
            algorithm_id=sr_module._algorithm(p),
            finding_sites=[sr_module._finding_site(r.region)],
            geometric_purpose=coded(BOUNDED_BY),
            measurements=[
                hd.sr.Measurement(
                    name=coded(f.code), value=r.probability(f), unit=codes.UCUM.NoUnits
                )
                for f in FINDINGS
            ],
            qualitative_evaluations=[
                sr_module._qualitative_evaluation(f.code, report.call(r.region, f).present)
                for f in FINDINGS
            ],
        )
        for r in report.regions
        if r.found
    ]
    content = hd.sr.MeasurementReport(
        observation_context=sr_module._observation_context(p, device_uid(report)),
        procedure_reported=coded(PROCEDURE),
        imaging_measurements=groups,
    )
    evaluations = hd.sr.ContainerContentItem(
        name=sr_module.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    evaluations.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=hd.sr.CodedConcept.from_dataset(name),
                value=value,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for name, value in texts
        ]
    )
    content[0].ContentSequence.append(evaluations)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[header],
        content=content,
        series_instance_uid=series_uid(report, "sr"),
        series_number=sr_module.SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(report, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=not_for_diagnosis(report),
        manufacturer_model_name=p.model_name[:64],
        software_versions=software_versions(report),
        coding_schemes=coding_schemes(),
    )
    append_ai_equipment(sr, report)
    return sr


def test_sr_is_what_highdicom_makes_item_by_item():
    """Prototypes, copies, unmade groups and the document's copy: the same document, to the
    byte, as highdicom building every item itself (the referee for the whole shortcut)."""
    report = _few_regions(
        "right lung",
        "left costophrenic angle",
        probabilities={
            ("right lung", "pneumothorax"): 0.87654321,
            ("right lung", "atelectasis"): 0.5,
        },
        sample="ap_atelectasis_bibasilar",
    )
    sr = report.to_sr()
    evaluations = sr.ContentSequence[-1]  # Qualitative Evaluations: the texts, given
    texts = [(i.ConceptNameCodeSequence[0], i.TextValue) for i in evaluations.ContentSequence]
    naive = _same_times(_naive_sr(report, texts), sr)
    assert encode(sr) == encode(naive)
    assert _without_timestamps(sr) == _without_timestamps(naive)
    assert sr.file_meta == naive.file_meta


def _header_variants() -> dict[str, Dataset]:
    """Source headers that take other steps of highdicom's document constructor."""
    base = make_findings().header
    variants = {}
    utf8 = copy.deepcopy(base)
    utf8.SpecificCharacterSet = "ISO_IR 192"
    utf8.PatientName = "Müller^Jürgen"
    variants["utf8"] = utf8
    no_maker = copy.deepcopy(base)
    del no_maker.Manufacturer
    variants["no manufacturer"] = no_maker
    equipment = copy.deepcopy(base)
    if "AcquisitionDateTime" in equipment:
        del equipment.AcquisitionDateTime
    equipment.AcquisitionDate, equipment.AcquisitionTime = "20240102", "030405"
    equipment.InstitutionName, equipment.StationName = "Clinic", "XR1"
    equipment.DeviceSerialNumber, equipment.SoftwareVersions = "42", ["a", "b"]
    equipment.StudyDescription, equipment.PatientAge = "CHEST", "042Y"
    variants["equipment"] = equipment
    anonymised = copy.deepcopy(base)
    for keyword in ANONYMISED:
        delattr(anonymised, keyword)
    variants["anonymised"] = anonymised
    return variants


@pytest.mark.parametrize("variant", ["utf8", "no manufacturer", "equipment", "anonymised"])
def test_sr_document_is_what_highdicom_makes(variant, caplog):
    """The document around the content, copied from highdicom's for the model and kind of
    source, equals highdicom's own for the same header (no fall-back to it on the way)."""
    findings = dataclasses.replace(
        _few_regions("right lung").source, header=_header_variants()[variant]
    )
    report = apply_rules(findings)
    with caplog.at_level(logging.DEBUG, logger="anaxreport.render.sr"):
        report.to_sr()
    assert "goes to highdicom" not in caplog.text
    root = sr_module._root_prototype(report.provenance, device_uid(report))
    slow = sr_module._document_by_highdicom(
        report, source_header(report, "SR"), sr_module._copy(root, ContentSequence=Sequence())
    )
    fast = sr_module._document_from_prototype(
        report,
        sr_module._shallow_header(report),
        sr_module._copy(root, ContentSequence=Sequence()),
    )
    _same_times(fast, slow)
    assert fast == slow
    assert fast.file_meta == slow.file_meta
    assert encode(fast) == encode(slow)
    assert report.header == findings.header  # read, never changed


def test_sr_document_leaves_headers_highdicom_refuses_to_highdicom():
    findings = _few_regions("right lung").source
    header = copy.deepcopy(findings.header)
    header.PatientSex = "X"  # not M, F or O: highdicom refuses
    report = apply_rules(dataclasses.replace(findings, header=header))
    with pytest.raises(ExportError, match=r"PatientSex|'X'"):
        report.to_sr()


def _written_sr_cases() -> dict[str, Report]:
    cases = {name: _hand_made(name) for name in ("normal", "bilateral", "missing")}
    for variant, header in _header_variants().items():
        cases[variant] = apply_rules(
            dataclasses.replace(_few_regions("right lung").source, header=header)
        )
    odd = copy.deepcopy(make_findings().header)
    odd.OtherPatientIDsSequence = [Dataset()]
    odd.OtherPatientIDsSequence[0].PatientID = "other"
    odd.OtherPatientIDsSequence[0].TypeOfPatientID = "TEXT"
    odd.IssuerOfPatientID = "ISSUER"
    cases["patient sequence"] = apply_rules(dataclasses.replace(make_findings(), header=odd))
    return cases


@pytest.mark.parametrize("case", list(_written_sr_cases()))
def test_written_sr_is_the_encoded_data_set(case, stopped_clock, caplog):
    """write_sr writes the file without making the data set: the bytes of encoding what
    render_sr makes, for samples, missing regions, character sets, sources with and without
    equipment data or identity, and a patient sequence copied from the source."""
    report = _written_sr_cases()[case]
    with caplog.at_level(logging.DEBUG, logger="anaxreport.render.sr"):
        written = sr_module.write_sr(report)
    assert "written from its data set" not in caplog.text
    assert written == encode(report.to_sr())
    assert written == _pydicom_bytes(report.to_sr())


def test_written_sr_of_an_undefined_length_source_sequence_is_the_encoded_data_set(
    stopped_clock, caplog
):
    """A source element the prototype holds otherwise (here a sequence of undefined length,
    as read from a file) sends the file the long way: the same bytes."""
    header = copy.deepcopy(make_findings().header)
    header.OtherPatientIDsSequence = [Dataset()]
    header.OtherPatientIDsSequence[0].PatientID = "other"
    header["OtherPatientIDsSequence"].is_undefined_length = True
    report = apply_rules(dataclasses.replace(make_findings(), header=header))
    with caplog.at_level(logging.DEBUG, logger="anaxreport.render.sr"):
        written = sr_module.write_sr(report)
    assert "written from its data set" in caplog.text
    assert written == encode(report.to_sr()) == _pydicom_bytes(report.to_sr())


def test_written_sr_raises_what_render_sr_raises():
    no_region = apply_rules(make_findings(missing=tuple(r.name for r in REGIONS)))
    refused = copy.deepcopy(make_findings().header)
    refused.PatientSex = "X"
    for report in (
        apply_rules(dataclasses.replace(make_findings(), header=None)),
        no_region,
        apply_rules(dataclasses.replace(make_findings(), header=refused)),
    ):
        with pytest.raises(ExportError) as expected:
            report.to_sr()
        with pytest.raises(ExportError) as written:
            sr_module.write_sr(report)
        assert str(written.value) == str(expected.value)
