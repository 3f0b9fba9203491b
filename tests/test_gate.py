"""anaxreport.gate: the input gate's rules, reason codes and the image-based view check.

Every case writes a real DICOM file with pydicom, reads it through ingest, and gates it.
"""

from __future__ import annotations

import pickle
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _dicom_factory import acceptance_files, gradient, make_dataset, write
from _lateral import render_lateral
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from anaxreport.errors import (
    REASONS,
    AnaxReportError,
    ConfigurationError,
    ExportError,
    InputFileNotFoundError,
    InvalidInputError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedStudyError,
    WeightsError,
)
from anaxreport.gate import (
    GateRules,
    check,
    lateral_score,
    load_gate_rules,
    patient_age_years,
    view_evidence,
)
from anaxreport.ingest import Radiograph, check_supported, read_radiograph
from anaxreport.resources import templates_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "samples").glob("*.dcm"))
_VIEW_KEYWORDS = ("ViewPosition", "ViewCodeSequence", "PatientOrientation", "SeriesDescription")


def _read(ds: Dataset, tmp_path: Path, name: str = "image.dcm") -> Radiograph:
    return read_radiograph(write(ds, tmp_path / name))


def _refused(radiograph: Radiograph, reason: str, *words: str, rules: GateRules | None = None):
    """The gate refuses with ``reason``, a one-line message naming the file and ``words``."""
    with pytest.raises(UnsupportedStudyError) as info:
        check(radiograph, rules)
    message = str(info.value)
    assert info.value.reason == reason, message
    assert "\n" not in message and radiograph.source in message and info.value.exit_code == 7
    assert all(word in message for word in words), message
    return info.value


def _image(pixels: np.ndarray, **attributes) -> Dataset:
    """A data set holding display ``pixels`` in [0, 1] as 12-bit MONOCHROME2."""
    return make_dataset(np.round(pixels * 4095).astype(np.uint16), **attributes)


# -- reason codes on the errors ------------------------------------------------------------


def test_every_error_class_has_a_known_default_reason_and_its_exit_code() -> None:
    expected = {
        AnaxReportError: ("error", 1),
        InvalidInputError: ("invalid-input", 3),
        InputFileNotFoundError: ("missing-file", 4),
        NotDicomError: ("not-dicom", 5),
        NoPixelDataError: ("no-pixel-data", 6),
        UnsupportedStudyError: ("unsupported", 7),
        WeightsError: ("bad-weights", 8),
        ConfigurationError: ("bad-configuration", 9),
        ExportError: ("export-failed", 10),
    }
    for cls, (reason, status) in expected.items():
        error = cls("x")
        assert (error.reason, error.exit_code) == (reason, status) and reason in REASONS


def test_reason_is_refined_per_instance_checked_and_survives_pickling() -> None:
    error = UnsupportedStudyError("a.dcm: lateral", reason="lateral-view")
    assert error.reason == "lateral-view" and UnsupportedStudyError.reason == "unsupported"
    for original in (error, InputFileNotFoundError("gone.dcm: no such file")):
        copy = pickle.loads(pickle.dumps(original))  # a batch worker process sends it back
        assert (type(copy), str(copy), copy.reason) == (
            type(original),
            str(original),
            original.reason,
        )
    with pytest.raises(ValueError, match="unknown reason code 'lateral'"):
        UnsupportedStudyError("x", reason="lateral")


# -- the acceptance set: one file of each kind, each with its own reason -------------------


def _ingest_and_gate(path: Path) -> str:
    """The Reporter's path without the model: the reason code, or "" for a pass."""
    try:
        check(read_radiograph(path))
    except AnaxReportError as exc:
        assert "\n" not in str(exc) and path.name in str(exc)
        return exc.reason
    return ""


def test_each_kind_of_bad_file_is_refused_with_its_own_reason(tmp_path: Path) -> None:
    files = acceptance_files(tmp_path)
    assert {reason: _ingest_and_gate(path) for reason, path in files.items()} == {
        reason: reason for reason in files
    }


# -- rules as data -------------------------------------------------------------------------


def test_shipped_gate_file_documents_the_defaults() -> None:
    assert load_gate_rules(templates_dir() / "gate.toml") == GateRules()
    keys = set(tomllib.loads((templates_dir() / "gate.toml").read_text())["gate"])
    assert keys == set(GateRules.__dataclass_fields__)  # every rule is documented there


def test_rules_load_from_a_gate_table_or_top_level_keys(tmp_path: Path) -> None:
    table = tmp_path / "site.toml"
    table.write_text('[other]\nx = 1\n\n[gate]\nmin_age_years = 16\nmodalities = ["dx"]\n')
    top = tmp_path / "gate.toml"
    top.write_text('unknown_view = "image"\n')
    assert load_gate_rules(table) == replace(
        GateRules(), min_age_years=16, modalities=frozenset({"DX"})
    )
    assert load_gate_rules(top).unknown_view == "image"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("min_side = 0\n", "min_side"),
        ("min_side = 100\nmax_side = 90\n", "exceeds"),
        ('unknown_view = "guess"\n', "unknown_view"),
        ('unknown_body_part = "maybe"\n', "unknown_body_part"),
        ("min_age_years = -1\n", "min_age_years"),
        ('modalities = "CR"\n', "modalities"),
        ("lateral_threshold = 2\n", "lateral_threshold"),
        ("refuse_blank = 1\n", "refuse_blank"),
        ("max_aspect = 0.5\n", "max_aspect"),
        ("min_sides = 10\n", "unknown gate rule(s) min_sides"),
        ("min_side = [\n", "not a valid TOML"),
    ],
)
def test_bad_rules_are_a_configuration_error_naming_the_file(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        load_gate_rules(path)
    assert words in str(info.value) and "bad.toml" in str(info.value)


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read gate rules"):
        load_gate_rules(tmp_path / "absent.toml")


# -- the samples pass, whatever the view policy --------------------------------------------


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_samples_pass_even_with_the_image_check_and_no_view_in_the_header(path: Path) -> None:
    radiograph = read_radiograph(path)
    check(radiograph)
    header = radiograph.header
    for keyword in _VIEW_KEYWORDS:
        if keyword in header:
            delattr(header, keyword)
    assert view_evidence(header) == []
    check(radiograph, GateRules(unknown_view="image"))
    assert lateral_score(radiograph.pixels) < 0.45


# -- modality and body part ----------------------------------------------------------------


@pytest.mark.parametrize("modality", ["CR", "DX", "SC", "OT"])
def test_radiography_and_secondary_capture_of_the_chest_pass(tmp_path: Path, modality: str) -> None:
    check(_read(make_dataset(Modality=modality), tmp_path))


@pytest.mark.parametrize("modality", ["MR", "CT", "MG", "US", ""])
def test_other_modalities_are_refused(tmp_path: Path, modality: str) -> None:
    radiograph = _read(make_dataset(Modality=modality or None), tmp_path)
    _refused(radiograph, "bad-modality", repr(modality), "CR")


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
@pytest.mark.parametrize("part", ["CHEST", "THORAX", "PORT CHEST", "chest_pa", None])
def test_chest_body_parts_and_an_absent_one_pass(tmp_path: Path, part: str | None) -> None:
    check(_read(make_dataset(BodyPartExamined=part), tmp_path))


@pytest.mark.parametrize("part", ["HAND", "KNEE", "ABDOMEN", "SKULL"])
def test_other_body_parts_are_refused(tmp_path: Path, part: str) -> None:
    _refused(_read(make_dataset(BodyPartExamined=part), tmp_path), "not-chest", part)


def _region(code: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
    return item


def test_anatomic_region_sequence_stands_in_for_body_part(tmp_path: Path) -> None:
    chest = make_dataset(BodyPartExamined=None, AnatomicRegionSequence=[_region("51185008", "x")])
    check(_read(chest, tmp_path, "chest.dcm"))
    knee = make_dataset(BodyPartExamined=None, AnatomicRegionSequence=[_region("72696002", "Knee")])
    _refused(_read(knee, tmp_path, "knee.dcm"), "not-chest", "Knee")


def test_secondary_capture_needs_the_chest_named(tmp_path: Path) -> None:
    bare = _read(make_dataset(Modality="SC", BodyPartExamined=None), tmp_path, "bare.dcm")
    _refused(bare, "not-chest", "SC image must name a chest body part")
    described = make_dataset(Modality="SC", BodyPartExamined=None, StudyDescription="XR CHEST 1V")
    check(_read(described, tmp_path, "described.dcm"))
    _refused(
        _read(described, tmp_path, "described.dcm"),
        "not-chest",
        rules=GateRules(description_hints=False),
    )


def test_absent_body_part_can_be_refused(tmp_path: Path) -> None:
    radiograph = _read(make_dataset(BodyPartExamined=None), tmp_path)
    check(radiograph)
    _refused(radiograph, "not-chest", rules=GateRules(unknown_body_part="refuse"))


# -- size, contrast, age -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 32), (96, 40)])
def test_tiny_images_are_refused(tmp_path: Path, shape: tuple[int, int]) -> None:
    radiograph = _read(make_dataset(gradient(*shape)), tmp_path)
    _refused(radiograph, "too-small", f"{shape[0]}x{shape[1]}", "64")


def test_size_limits_and_aspect_are_rules(tmp_path: Path) -> None:
    radiograph = _read(make_dataset(gradient(400, 90)), tmp_path)
    _refused(radiograph, "bad-aspect", "400x90", "4.44")  # a whole-spine stitch, not a chest
    check(radiograph, GateRules(max_aspect=5.0))
    _refused(radiograph, "too-large", "400x90", rules=GateRules(max_side=256, max_aspect=5.0))
    _refused(radiograph, "too-small", rules=GateRules(min_side=100, max_aspect=5.0))


def test_ingest_refuses_what_exceeds_the_given_side_before_decoding(tmp_path: Path) -> None:
    path = write(make_dataset(gradient(300, 100)), tmp_path / "image.dcm")
    with pytest.raises(UnsupportedStudyError) as info:
        read_radiograph(path, max_side=256)
    assert info.value.reason == "too-large"


def test_blank_image_is_refused(tmp_path: Path) -> None:
    radiograph = _read(make_dataset(np.full((96, 80), 300, np.uint16)), tmp_path)
    _refused(radiograph, "blank-image")
    check(radiograph, GateRules(refuse_blank=False))


@pytest.mark.parametrize(
    ("attributes", "years"),
    [
        ({"PatientAge": "006Y"}, 6.0),
        ({"PatientAge": "017Y"}, 17.0),
        ({"PatientAge": "010M"}, 10 / 12),
        ({"PatientAge": "003W"}, 21 / 365.2425),
        ({"PatientAge": "200D"}, 200 / 365.2425),
        ({"PatientBirthDate": "20200101", "StudyDate": "20260101"}, 6.0),
    ],
)
def test_children_are_refused(tmp_path: Path, attributes: dict, years: float) -> None:
    radiograph = _read(make_dataset(**attributes), tmp_path)
    age = patient_age_years(radiograph.header)
    assert age is not None and age[0] == pytest.approx(years, abs=0.01)
    _refused(radiograph, "paediatric", "18", "adults")
    check(radiograph, GateRules(min_age_years=0))  # the check can be turned off
    check(radiograph, GateRules(min_age_years=years / 2))


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(
    "attributes",
    [
        {"PatientAge": "018Y"},
        {"PatientAge": "045Y", "PatientBirthDate": "20200101"},  # Patient's Age wins
        {"PatientBirthDate": None},
        {"PatientBirthDate": "2030010"},  # malformed: unknown age passes
        {"PatientBirthDate": "20300101"},  # born after the study: unknown
        {"PatientAge": "abc", "PatientBirthDate": None},
        {"StudyDate": None},
    ],
)
def test_adults_and_unknown_ages_pass(tmp_path: Path, attributes: dict) -> None:
    check(_read(make_dataset(**attributes), tmp_path))


# -- the view from the header --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower case, as sites send
@pytest.mark.parametrize("view", ["PA", "AP", "", None, "pa", "AP SUPINE"])
def test_frontal_and_absent_views_pass(tmp_path: Path, view: str | None) -> None:
    check(_read(make_dataset(ViewPosition=view), tmp_path))


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "LAT", "XTABLE LATERAL"])
def test_lateral_view_positions_are_refused(tmp_path: Path, view: str) -> None:
    _refused(_read(make_dataset(ViewPosition=view), tmp_path), "lateral-view", view, "PA")


@pytest.mark.parametrize("view", ["RLO", "LLD", "RAO"])
def test_oblique_and_decubitus_views_are_not_frontal(tmp_path: Path, view: str) -> None:
    _refused(_read(make_dataset(ViewPosition=view), tmp_path), "not-frontal", view, "frontal")


def _view_code(code: str, meaning: str) -> list[Dataset]:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
    return [item]


@pytest.mark.parametrize(
    ("attributes", "words"),
    [
        ({"ViewCodeSequence": _view_code("399173006", "left lateral")}, "left lateral"),
        ({"ViewCodeSequence": _view_code("R-10232", "Right Lateral")}, "Right Lateral"),
        ({"PatientOrientation": ["A", "F"]}, "Patient Orientation"),
        ({"SeriesDescription": "CHEST LAT"}, "SeriesDescription"),
        ({"ProtocolName": "Thorax lateral"}, "ProtocolName"),
    ],
)
def test_lateral_evidence_elsewhere_in_the_header(
    tmp_path: Path, attributes: dict, words: str
) -> None:
    radiograph = _read(make_dataset(ViewPosition=None, **attributes), tmp_path)
    _refused(radiograph, "lateral-view", words)


def test_image_level_lateral_evidence_beats_view_position(tmp_path: Path) -> None:
    lateral_code = _view_code("399198007", "right lateral")
    radiograph = _read(make_dataset(ViewPosition="PA", ViewCodeSequence=lateral_code), tmp_path)
    _refused(radiograph, "lateral-view", "right lateral", "View Position 'PA'")


def test_series_hints_only_when_the_image_level_header_is_silent(tmp_path: Path) -> None:
    # the study description names both views of a two-view study: never read for the view
    check(_read(make_dataset(ViewPosition=None, StudyDescription="CHEST (PA AND LAT)"), tmp_path))
    both = make_dataset(ViewPosition=None, SeriesDescription="PA AND LAT")
    assert view_evidence(_read(both, tmp_path).header) == []
    frontal = make_dataset(ViewPosition="PA", SeriesDescription="CHEST LAT")
    check(_read(frontal, tmp_path))  # View Position says PA for this image


def test_unknown_view_policies(tmp_path: Path) -> None:
    radiograph = _read(make_dataset(ViewPosition=None), tmp_path)
    check(radiograph)
    _refused(radiograph, "not-frontal", "unknown view", rules=GateRules(unknown_view="refuse"))


# -- the view from the image ---------------------------------------------------------------


@pytest.mark.parametrize("facing", ["left", "right"])
def test_image_check_refuses_a_synthetic_lateral_when_asked(tmp_path: Path, facing: str) -> None:
    pixels = render_lateral(np.random.default_rng(3), facing=facing)
    radiograph = _read(_image(pixels, ViewPosition=None), tmp_path)
    assert lateral_score(radiograph.pixels) > 0.9
    check(radiograph)  # default: a silent header passes
    _refused(radiograph, "lateral-view", "looks lateral", rules=GateRules(unknown_view="image"))
    labelled = _read(_image(pixels, ViewPosition="LL"), tmp_path, "labelled.dcm")
    _refused(labelled, "lateral-view", "View Position 'LL'")


def test_image_check_passes_a_frontal_with_one_white_hemithorax() -> None:
    """The cue is the bright midline, which a white lung (effusion, collapse) keeps."""
    pixels = read_radiograph(ROOT / "samples" / "pa_effusion_right.dcm").pixels.copy()
    pixels[:, : pixels.shape[1] // 2] = np.maximum(pixels[:, : pixels.shape[1] // 2], 0.85)
    assert lateral_score(pixels) < 0.45


def test_lateral_score_of_degenerate_images() -> None:
    assert lateral_score(np.zeros((64, 64), np.float32)) == 0.0
    assert 0.0 <= lateral_score(np.eye(70, dtype=np.float32)) <= 1.0


# -- the old entry point and the Reporter --------------------------------------------------


def test_ingest_check_supported_is_the_default_gate(tmp_path: Path) -> None:
    check_supported(_read(make_dataset(), tmp_path))
    with pytest.raises(UnsupportedStudyError) as info:
        check_supported(_read(make_dataset(ViewPosition="LL"), tmp_path))
    assert info.value.reason == "lateral-view"


def test_reporter_takes_gate_rules_or_a_file(tmp_path: Path) -> None:
    from _models import tiny_checkpoint

    from anaxreport.reporter import Reporter

    checkpoint = tiny_checkpoint(tmp_path / "tiny.json", 32, 128)
    child = write(make_dataset(gradient(150, 110), PatientAge="009Y"), tmp_path / "child.dcm")
    with pytest.raises(UnsupportedStudyError) as info:
        Reporter.from_pretrained(checkpoint).run(child)
    assert info.value.reason == "paediatric"
    rules = tmp_path / "gate.toml"
    rules.write_text("[gate]\nmin_age_years = 0\n")
    reporter = Reporter.from_pretrained(checkpoint, gate=rules)
    assert reporter.gate == GateRules(min_age_years=0)
    assert reporter.read(child).rows == 150
    assert len(reporter.run(child).regions) == 18
    strict = Reporter.from_pretrained(checkpoint, gate=GateRules(max_side=100))
    with pytest.raises(UnsupportedStudyError, match="too large"):
        strict.read(child)
    rle = make_dataset(gradient(150, 110))
    rle.compress(RLELossless)
    assert strict.gate.max_side == 100 and reporter.read(rle).columns == 110
