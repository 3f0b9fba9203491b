"""Every output of a CLI batch, on every sample plus an anonymised copy: identity equals the
input's, the referees accept it, and the SR and FHIR point at the same regions."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pydicom
import pytest

from anaxreport import Reporter
from anaxreport.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
PATIENT = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
STUDY = ("StudyInstanceUID", "AccessionNumber", "StudyID", "StudyDate")
ANONYMISED = (*PATIENT, "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
              "ReferringPhysicianName")  # fmt: skip


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[list[Path], Path]:
    folder = tmp_path_factory.mktemp("batch")
    anonymised = pydicom.dcmread(SAMPLES / "ap_pneumonia_left.dcm")
    for keyword in ANONYMISED:
        if keyword in anonymised:
            delattr(anonymised, keyword)
    anonymised.SOPInstanceUID = "2.25.1234567890"
    anonymised.file_meta.MediaStorageSOPInstanceUID = anonymised.SOPInstanceUID
    anonymised.save_as(folder / "anonymised.dcm")
    inputs = [*sorted(SAMPLES.glob("*.dcm")), folder / "anonymised.dcm"]
    out = folder / "out"
    assert main([*map(str, inputs), "--format", "all", "-o", str(out)]) == 0
    return inputs, out


def _outputs(out: Path, source: pydicom.Dataset) -> dict[str, Path]:
    uid = source.SOPInstanceUID
    suffixes = {"text": ".txt", "json": ".json", "fhir": ".fhir.json", "sr": ".sr.dcm",
                "gsps": ".gsps.dcm"}  # fmt: skip
    return {kind: out / f"{uid}{suffix}" for kind, suffix in suffixes.items()}


def _resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_every_input_gets_every_output_and_nothing_else(batch):
    inputs, out = batch
    expected = {p for source in inputs for p in _outputs(out, pydicom.dcmread(source)).values()}
    assert set(out.iterdir()) == expected | {out / "summary.csv"}


def test_dicom_outputs_keep_the_inputs_patient_study_and_image(batch):
    inputs, out = batch
    for path in inputs:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        files = _outputs(out, source)
        sr, gsps = pydicom.dcmread(files["sr"]), pydicom.dcmread(files["gsps"])
        for ds in (sr, gsps):
            for keyword in (*PATIENT, *STUDY):
                assert ds.get(keyword, "") == source.get(keyword, ""), (path.name, keyword)
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.SeriesInstanceUID == source.SeriesInstanceUID
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        image = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
        assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_fhir_and_json_keep_the_inputs_identity(batch):
    inputs, out = batch
    for path in inputs:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        files = _outputs(out, source)
        bundle = json.loads(files["fhir"].read_text())
        (patient,) = _resources(bundle, "Patient")
        ids = [i["value"] for i in patient.get("identifier", [])]
        assert ids == ([source.PatientID] if source.get("PatientID") else [])
        (study,) = _resources(bundle, "ImagingStudy")
        assert {"system": "urn:dicom:uid", "value": f"urn:oid:{source.StudyInstanceUID}"} in (
            study["identifier"]
        )
        series = study["series"][0]
        assert series["uid"] == source.SeriesInstanceUID
        assert series["instance"][0]["uid"] == source.SOPInstanceUID
        (report,) = _resources(bundle, "DiagnosticReport")
        text = base64.b64decode(report["presentedForm"][0]["data"]).decode()
        assert text == files["text"].read_text().rstrip("\n") + "\n"
        assert json.loads(files["json"].read_text())["study"]["sop_instance_uid"] == (
            source.SOPInstanceUID
        )


def test_sr_groups_and_fhir_observations_share_tracking_uids(batch):
    inputs, out = batch
    for path in inputs:
        files = _outputs(out, pydicom.dcmread(path, stop_before_pixels=True))
        sr = pydicom.dcmread(files["sr"])
        tracking = {}  # region name -> tracking UID, from the SR tree
        for group in _groups(sr):
            items = {i.ConceptNameCodeSequence[0].CodeValue: i for i in group.ContentSequence}
            tracking[items["112039"].TextValue] = items["112040"].UID
        bundle = json.loads(files["fhir"].read_text())
        report = json.loads(files["json"].read_text())
        observed = {
            i["value"].removeprefix("urn:oid:")
            for o in _resources(bundle, "Observation")
            for i in o.get("identifier", [])
            if i.get("system") == "urn:dicom:uid"
        }
        present_regions = {p["region"] for p in report["present"]}
        assert observed == {tracking[name] for name in present_regions}
        assert set(tracking) == {r["name"] for r in report["regions"] if r["found"]}


def _groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    (measurements,) = [
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    return list(measurements.ContentSequence)


def test_the_referees_accept_every_file_of_the_batch(batch, dciodvfy, dsrdump, fhir_validate):
    inputs, out = batch
    bundles = []
    for path in inputs:
        files = _outputs(out, pydicom.dcmread(path, stop_before_pixels=True))
        assert dciodvfy(files["sr"]) == [] and dsrdump(files["sr"]) == [], path.name
        assert dciodvfy(files["gsps"]) == [], path.name
        bundles.append(files["fhir"])
    results = fhir_validate(bundles)
    assert len(results) == len(inputs)
    for name, result in results.items():
        assert result["schema"] == [] and result["fhirjs"]["errors"] == [], name


def test_the_shipped_texts_are_made_once_per_report(tmp_path, monkeypatch):
    """The text output and the FHIR Bundle's presentedForm are one rendering of the shipped
    template; a template of one's own is rendered each time it is asked for."""
    import anaxreport.render.text as text_module

    reporter = Reporter.from_pretrained()
    report = reporter.run(SAMPLES / "pa_effusion_right.dcm")
    calls = []
    render_text = text_module.render_text
    monkeypatch.setattr(
        text_module, "render_text", lambda *a: calls.append(a[1:]) or render_text(*a)
    )
    text = report.to_text()
    report.to_fhir()
    assert report.to_text() is text and calls == [()]
    own = tmp_path / "own.txt.j2"
    own.write_text("{{ impression | join(' ') }}\n")
    assert report.to_text(own) == report.to_text(own) == " ".join(report.impression) + "\n"
    assert len(calls) == 3
    assert reporter.report(report.source).to_text() == text  # a new report: rendered anew
    assert len(calls) == 4
