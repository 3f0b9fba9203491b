"""Tests of the FHIR transaction Bundle (anaxreport.render.fhir, DESIGN.md §6).

Three referees: fhir.resources parses every Bundle back (``validate_bundle``, R4B and R5
packages) and dumps exactly the plain data render_fhir wrote, so the fast path cannot drift from
the models; the FHIR R4 JSON schema and FHIR.js (npm, run once per module by
tests/fhir_validate.js) check the R4B Bundles, code bindings included. R4B is the R4 schema for
every element these Bundles use. Hand-made reports cover the normal, bilateral, anonymised and
missing-region cases; two real model runs cover whatever the model says; copies of a sample with
odd header values cover what the header can get wrong.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pydicom
import pytest
from _reports import PROVENANCE, SAMPLES, make_findings
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4B

from anaxreport import Reporter
from anaxreport.errors import ConfigurationError, ExportError
from anaxreport.ingest import StudyIdentity
from anaxreport.render.fhir import render_fhir, render_refusal, validate_bundle
from anaxreport.render.uids import derived_uid, derived_uuid, tracking_uid
from anaxreport.report import ImageInfo, Refusal, Report
from anaxreport.rules import apply_rules
from anaxreport.vocab import FINDINGS, region

ROOT = Path(__file__).resolve().parents[1]
ISSUED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
VERSIONS = ("R4B", "R5")
SCT = "http://snomed.info/sct"

BILATERAL = {
    ("right lower lung zone", "pleural effusion"): 0.9,
    ("left lower lung zone", "pleural effusion"): 0.8,
    ("right costophrenic angle", "pleural effusion"): 0.7,
    ("right lung", "lung opacity"): 0.6,
    ("upper mediastinum", "lung opacity"): 0.95,
    ("cardiac silhouette", "enlarged cardiac silhouette"): 0.88,
}
MISSING = {  # the left costophrenic angle has no box: no call, no Observation
    ("left costophrenic angle", "pleural effusion"): 0.97,
    ("left costophrenic angle", "pneumothorax"): 0.99,
    ("left lower lung zone", "pleural effusion"): 0.6,
}
PATIENT_KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber")


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Report]:
    folder = tmp_path_factory.mktemp("fhir-dicom")
    anonymised = _copy_sample(folder / "anonymised.dcm", delete=PATIENT_KEYWORDS)
    zoned = _copy_sample(folder / "zoned.dcm", TimezoneOffsetFromUTC="+0130")
    reporter = Reporter.from_pretrained()
    return {
        "normal": apply_rules(make_findings()),
        "bilateral": apply_rules(make_findings(BILATERAL)),
        "anonymised": apply_rules(make_findings(BILATERAL, source=anonymised)),
        "missing": apply_rules(make_findings(MISSING, missing=("left costophrenic angle",))),
        "zoned": apply_rules(make_findings(source=zoned)),
        "model_effusion": reporter.run(SAMPLES / "pa_effusion_right.dcm"),
        "model_pneumonia": reporter.run(SAMPLES / "ap_pneumonia_left.dcm"),
    }


def _copy_sample(path: Path, delete: tuple[str, ...] = (), **values: str) -> Path:
    ds = pydicom.dcmread(SAMPLES / "pa_normal.dcm")
    for keyword in delete:
        delattr(ds, keyword)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def bundles(reports: dict[str, Report]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (name, version): render_fhir(report, version, ISSUED)
        for name, report in reports.items()
        for version in VERSIONS
    }


@pytest.fixture(scope="module")
def referees(
    bundles: dict[tuple[str, str], dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
    fhir_validate,
) -> dict[str, dict[str, Any]]:
    """tests/fhir_validate.js over every R4B Bundle and one broken on purpose, in one node run."""
    folder = tmp_path_factory.mktemp("fhir-json")
    files = {name: bundle for (name, version), bundle in bundles.items() if version == "R4B"}
    files["broken"] = _broken(bundles["bilateral", "R4B"])
    paths = []
    for name, bundle in files.items():
        paths.append(folder / f"{name}.json")
        paths[-1].write_text(json.dumps(bundle))
    return fhir_validate(paths)


def _broken(bundle: dict[str, Any]) -> dict[str, Any]:
    """A copy with two code-binding errors fhir.resources would let through in plain JSON."""
    broken = json.loads(json.dumps(bundle))
    _resource(broken, "Patient")["gender"] = "mail"
    _resource(broken, "DiagnosticReport")["status"] = "draft"
    return broken


# --- helpers -------------------------------------------------------------------------------


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _resource(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    (only,) = _resources(bundle, kind)
    return only


def _url(bundle: dict[str, Any], kind: str) -> str:
    (url,) = [e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]
    return url


def _references(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        if isinstance(data.get("reference"), str):
            yield data["reference"]
        for value in data.values():
            yield from _references(value)
    elif isinstance(data, list):
        for value in data:
            yield from _references(value)


def _codes(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept["coding"]}


def _region_observations(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in _resources(bundle, "Observation") if len(o["identifier"]) == 2]


CASES = ("normal", "bilateral", "anonymised", "missing", "zoned", "model_effusion")
CASES += ("model_pneumonia",)


# --- validity ------------------------------------------------------------------------------


def _assert_what_fhir_resources_writes(bundle: dict[str, Any], version: str) -> None:
    """``bundle`` is valid JSON data, and fhir.resources parses it and dumps it back unchanged,
    in the same (FHIR element) order: the plain data is exactly what the models would write."""
    assert json.loads(json.dumps(bundle)) == bundle  # JSON types only (no tuples, no numpy)
    validate_bundle(bundle, version)
    model = BundleR5 if version == "R5" else BundleR4B
    dumped = model.model_validate(bundle).model_dump(mode="json", exclude_none=True)
    assert dumped == bundle
    assert json.dumps(dumped) == json.dumps(bundle)


def test_derived_uids_are_uuid5s_for_all_time():
    """Every UID and FHIR id anaxreport writes is a uuid5 of its parts: never to change."""
    assert derived_uid("tracking", "right lung", "ff88", "é肺") == (
        "2.25.163766064617227969250440010011658782773"
    )
    for parts in [("",), ("a", ""), ("fhir", "Observation", "x" * 300), ("\x1f", "肺\n")]:
        expected = uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "urn:anaxreport"), "\x1f".join(parts))
        assert derived_uuid(*parts) == expected.int
        assert derived_uid(*parts) == f"2.25.{expected.int}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", CASES)
def test_fhir_resources_parse_the_bundle_back(bundles, name, version):
    bundle = bundles[name, version]
    _assert_what_fhir_resources_writes(bundle, version)
    assert bundle["type"] == "transaction"
    assert all(e["request"]["method"] == "POST" for e in bundle["entry"])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("with_image", [False, True])
def test_refusal_bundle_is_what_fhir_resources_writes(version, with_image):
    header = pydicom.dcmread(SAMPLES / "pa_normal.dcm", stop_before_pixels=True)
    image = None
    if with_image:
        image = ImageInfo(header.Rows, header.Columns, header.Modality, "LL", None,
                          header.StudyDescription)  # fmt: skip
    message = "x.dcm: a <lateral> view & more"
    study = StudyIdentity.from_dataset(header)
    refusal = Refusal(study, "lateral-view", message, "x.dcm", PROVENANCE, image, header)
    bundle = render_refusal(refusal, version, ISSUED)
    _assert_what_fhir_resources_writes(bundle, version)
    assert _resource(bundle, "DiagnosticReport")["status"] == "cancelled"
    assert "&lt;lateral&gt; view &amp; more" in _resource(bundle, "DiagnosticReport")["text"]["div"]


def test_validate_bundle_is_one_line_export_error(bundles):
    broken = json.loads(json.dumps(bundles["bilateral", "R5"]))
    _resource(broken, "ImagingStudy")["series"][0]["uid"] = "1.2.3_4"
    _resource(broken, "Patient")["birthDate"] = "1963-02-30"
    with pytest.raises(
        ExportError, match=r"^FHIR R5 Bundle \S+ is invalid: entry\.0\.resource\.birthDate: "
    ) as info:
        validate_bundle(broken, "r5")
    assert "\n" not in str(info.value) and "(and 1 more)" in str(info.value)
    with pytest.raises(ConfigurationError, match="FHIR version"):
        validate_bundle(bundles["bilateral", "R4B"], "R4")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", CASES)
def test_every_reference_resolves_inside_the_bundle(bundles, name, version):
    bundle = bundles[name, version]
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    assert set(_references(bundle)) <= set(urls)


@pytest.mark.parametrize("name", CASES)
def test_r4_schema_and_fhirjs_accept_the_r4b_bundle(referees, name):
    result = referees[name]
    assert result["schema"] == []
    assert result["fhirjs"]["errors"] == []


def test_referees_catch_binding_errors(referees):
    result = referees["broken"]
    assert any("gender" in e for e in result["schema"])
    assert any("DiagnosticReport" in e and "status" in e for e in result["schema"])
    assert 'Patient.gender: Code "mail" not found in value set' in result["fhirjs"]["errors"]
    assert (
        'DiagnosticReport.status: Code "draft" not found in value set'
        in (result["fhirjs"]["errors"])
    )


# --- content -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_identity(bundles, reports, version):
    study = reports["bilateral"].study
    bundle = bundles["bilateral", version]
    patient = _resource(bundle, "Patient")
    assert [i["value"] for i in patient["identifier"]] == [study.patient_id]
    family, given = study.patient_name.split("^")
    assert patient["name"] == [{"family": family, "given": [given]}]
    assert patient["birthDate"] == "1963-01-01"
    assert patient["gender"] == "female"
    imaging = _resource(bundle, "ImagingStudy")
    uid = {"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_instance_uid}"}
    assert imaging["identifier"][0] == uid
    assert imaging["identifier"][1]["value"] == study.accession_number
    assert imaging["subject"] == {"reference": _url(bundle, "Patient")}
    (series,) = imaging["series"]
    assert series["uid"] == study.series_instance_uid
    assert series["instance"][0]["uid"] == study.sop_instance_uid
    assert series["instance"][0]["sopClass"]["code"] == f"urn:oid:{study.sop_class_uid}"
    conditions = {e["request"]["url"]: e["request"].get("ifNoneExist") for e in bundle["entry"]}
    assert conditions["Patient"] == f"identifier={study.patient_id}"
    assert conditions["ImagingStudy"] == f"identifier=urn:dicom:uid|{uid['value']}"


@pytest.mark.parametrize("version", VERSIONS)
def test_anonymised_input_still_has_a_patient(bundles, reports, version):
    assert reports["anonymised"].study.patient_id == ""
    bundle = bundles["anonymised", version]
    patient = _resource(bundle, "Patient")
    assert set(patient) == {"resourceType", "id"}
    (entry,) = [e for e in bundle["entry"] if e["resource"] is patient]
    assert "ifNoneExist" not in entry["request"]
    assert _resource(bundle, "ImagingStudy")["subject"] == {"reference": entry["fullUrl"]}
    assert len(_resource(bundle, "ImagingStudy")["identifier"]) == 1  # no accession


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["normal", "bilateral", "model_pneumonia"])
def test_diagnostic_report(bundles, reports, name, version):
    report, bundle = reports[name], bundles[name, version]
    dr = _resource(bundle, "DiagnosticReport")
    assert dr["status"] == "preliminary"
    assert dr["category"][0]["coding"][0]["code"] == "RAD"
    assert _codes(dr["code"]) == {("http://loinc.org", "36554-4")}
    assert dr["subject"] == {"reference": _url(bundle, "Patient")}
    study_key = "study" if version == "R5" else "imagingStudy"
    assert dr[study_key] == [{"reference": _url(bundle, "ImagingStudy")}]
    day = report.study.study_date
    assert dr["effectiveDateTime"] == f"{day[:4]}-{day[4:6]}-{day[6:]}"
    assert dr["issued"] == "2024-05-06T07:08:09Z"
    observations = [e["fullUrl"] for e in bundle["entry"] if e["request"]["url"] == "Observation"]
    assert [r["reference"] for r in dr["result"]] == observations
    assert dr["conclusion"] == " ".join(report.impression)
    present = {c.finding for c in report.present_calls()}
    expected = {(f.code.fhir_system, f.code.value) for f in present}
    assert set().union(*map(_codes, dr.get("conclusionCode", []))) == expected
    (form,) = dr["presentedForm"]
    text = base64.b64decode(form["data"]).decode("utf-8")
    assert report.impression[0] in text and text == report.to_text()
    assert form["contentType"] == "text/plain; charset=utf-8"
    assert "Not for diagnostic use" in dr["text"]["div"]
    assert ("note" in dr) == (version == "R5")


@pytest.mark.parametrize("version", VERSIONS)
def test_device_says_which_model_and_not_for_diagnosis(bundles, reports, version):
    provenance = reports["model_effusion"].provenance
    bundle = bundles["model_effusion", version]
    device = _resource(bundle, "Device")
    assert device["identifier"][0]["value"] == provenance.weights_sha256
    assert device["manufacturer"] == "anaxreport"
    assert device["version"][0]["value"] == provenance.model_version
    name = device["name"][0]["value"] if version == "R5" else device["deviceName"][0]["name"]
    assert name == provenance.model_name
    assert provenance.disclaimer in device["note"][0]["text"]
    device_url = _url(bundle, "Device")
    for observation in _resources(bundle, "Observation"):
        assert observation["device"] == {"reference": device_url}
        assert provenance.disclaimer in observation["note"][0]["text"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", CASES)
def test_one_observation_per_present_call_and_per_absent_finding(bundles, reports, name, version):
    report, bundle = reports[name], bundles[name, version]
    present = report.present_calls()
    absent = [f for f in FINDINGS if f not in {c.finding for c in present}]
    observations = _resources(bundle, "Observation")
    assert len(observations) == len(present) + len(absent)
    stated = {(o["code"]["coding"][0]["code"]) for o in observations}
    assert stated == {f.code.value for f in FINDINGS}
    values = [o["valueCodeableConcept"]["coding"][0]["code"] for o in observations]
    assert values == ["52101004"] * len(present) + ["272519000"] * len(absent)
    for observation, call in zip(observations, present, strict=False):
        (component,) = observation["component"]
        assert component["valueQuantity"]["value"] == pytest.approx(call.probability, abs=1e-4)
        assert component["valueQuantity"]["code"] == "1"
        assert _codes(observation["code"]) == {
            (call.finding.code.fhir_system, call.finding.code.value)
        }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["bilateral", "model_effusion"])
def test_region_observations_carry_the_sr_tracking_uid(bundles, reports, name, version):
    report, bundle = reports[name], bundles[name, version]
    observations = _region_observations(bundle)
    assert len(observations) == len(report.present_calls())
    for observation, call in zip(observations, report.present_calls(), strict=True):
        tracking = observation["identifier"][1]
        assert tracking["system"] == "urn:dicom:uid"
        assert tracking["value"] == f"urn:oid:{tracking_uid(report, call.region)}"


def test_r4b_body_site_and_laterality(bundles, reports):
    bundle = bundles["bilateral", "R4B"]
    sites = {o["bodySite"]["text"]: o["bodySite"] for o in _region_observations(bundle)}
    assert _codes(sites["right lung"]) == {(SCT, "3341006")}  # pre-coordinated: no extension
    assert "extension" not in sites["right lung"]
    left = sites["left lower lung zone"]
    assert _codes(left) == {(SCT, "281394001")}
    (extension,) = left["extension"]
    assert extension["url"].endswith("/observation-structureLaterality")
    assert _codes(extension["valueCodeableConcept"]) == {(SCT, "7771000")}
    assert "extension" not in sites["cardiac silhouette"]
    absent = [o for o in _resources(bundle, "Observation") if o not in _region_observations(bundle)]
    assert absent and all("bodySite" not in o for o in absent)


def test_r5_imaging_selection_and_body_structure(bundles, reports):
    report, bundle = reports["bilateral"], bundles["bilateral", "R5"]
    entries = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    observations = _region_observations(bundle)
    assert observations
    for observation, call in zip(observations, report.present_calls(), strict=True):
        assert "bodySite" not in observation  # obs-8: bodySite or bodyStructure
        structure = entries[observation["bodyStructure"]["reference"]]
        (included,) = structure["includedStructure"]
        site = call.region.fhir_site or call.region.site
        assert _codes(included["structure"]) == {(site.fhir_system, site.value)}
        if call.region.laterality.value is not None:
            side = call.region.laterality.value.value
            assert _codes(included["laterality"]) == {(SCT, side)}
        selection = entries[observation["derivedFrom"][1]["reference"]]
        assert included["spatialReference"] == [observation["derivedFrom"][1]]
        (instance,) = selection["instance"]
        assert instance["uid"] == report.study.sop_instance_uid
        (region_2d,) = instance["imageRegion2D"]
        assert region_2d["regionType"] == "polyline"
        box = report.region(call.region).box
        expected = [v for point in box.polyline() for v in point]
        assert region_2d["coordinate"] == pytest.approx(expected, abs=1e-3)
        assert selection["studyUid"] == report.study.study_instance_uid
    upper = _body_structure_of(bundle, "upper mediastinum")
    assert _codes(upper["includedStructure"][0]["qualifier"][0]) == {(SCT, "264217000")}
    regions = {c.region for c in report.present_calls()}
    assert len(_resources(bundle, "ImagingSelection")) == len(regions)
    assert len(_resources(bundle, "BodyStructure")) == len(regions)


def _body_structure_of(bundle: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [b for b in _resources(bundle, "BodyStructure") if b["description"] == name]
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_region_has_no_observation(bundles, reports, version):
    report, bundle = reports["missing"], bundles["missing", version]
    missing = region("left costophrenic angle")
    assert report.region(missing).box is None
    assert report.present_calls()  # the left lower lung zone effusion
    assert all(c.region is not missing for c in report.present_calls())
    texts = [o.get("bodySite", {}).get("text") for o in _region_observations(bundle)]
    assert "left costophrenic angle" not in texts
    assert not any(missing.name in json.dumps(s) for s in _resources(bundle, "ImagingSelection"))


def test_absent_finding_certainty_is_its_highest_found_region_probability(bundles):
    observations = _resources(bundles["missing", "R4B"], "Observation")
    (pneumothorax,) = [o for o in observations if o["code"]["text"] == "pneumothorax"]
    assert pneumothorax["valueCodeableConcept"]["coding"][0]["code"] == "272519000"
    # 0.99 in the region without a box is not evidence; every found region says 0.01
    assert pneumothorax["component"][0]["valueQuantity"]["value"] == pytest.approx(0.01)


def test_effective_time_needs_a_time_zone(bundles):
    zoned = _resource(bundles["zoned", "R4B"], "DiagnosticReport")["effectiveDateTime"]
    assert zoned == "2018-04-12T18:36:18+01:30"
    plain = _resource(bundles["normal", "R4B"], "DiagnosticReport")["effectiveDateTime"]
    assert plain == "2018-04-12"


# --- determinism and arguments -------------------------------------------------------------


def _without_times(bundle: dict[str, Any]) -> str:
    text = json.dumps(bundle, sort_keys=True)
    for when in ("2024-05-06T07:08:09Z", "2024-05-06T08:08:09+01:00"):
        text = text.replace(when, "ISSUED")
    return text


@pytest.mark.parametrize("version", VERSIONS)
def test_same_input_same_bundle_apart_from_issued(bundles, reports, version):
    later = ISSUED.astimezone(timezone(timedelta(hours=1)))
    again = render_fhir(reports["bilateral"], version, issued=later)
    assert _without_times(again) == _without_times(bundles["bilateral", version])
    other = render_fhir(apply_rules(make_findings(BILATERAL, threshold=0.55)), version, ISSUED)
    ids = {e["fullUrl"] for e in bundles["bilateral", version]["entry"]}
    assert ids.isdisjoint(e["fullUrl"] for e in other["entry"])


def test_report_to_fhir_defaults_to_r4b_now(reports):
    bundle = reports["normal"].to_fhir()
    BundleR4B.model_validate(bundle)
    assert _resources(bundle, "ImagingStudy")[0]["series"][0]["modality"]["code"] == "DX"
    issued = datetime.fromisoformat(bundle["timestamp"])
    assert abs((datetime.now(UTC) - issued).total_seconds()) < 60


@pytest.mark.parametrize("version", ["R4", "STU3", "r6", "", None])
def test_unsupported_version_is_a_configuration_error(reports, version):
    with pytest.raises(ConfigurationError, match="FHIR version"):
        render_fhir(reports["normal"], version)  # type: ignore[arg-type]


def test_version_is_case_insensitive(reports):
    assert render_fhir(reports["normal"], "r5", ISSUED) == render_fhir(
        reports["normal"], "R5", ISSUED
    )


def test_naive_issued_is_a_configuration_error(reports):
    with pytest.raises(ConfigurationError, match="issued"):
        render_fhir(reports["normal"], "R4B", issued=datetime(2024, 1, 1))


@pytest.mark.parametrize("offset", [timedelta(hours=15), timedelta(hours=1, seconds=30)])
def test_issued_fhir_cannot_write_is_an_export_error(reports, offset):
    with pytest.raises(ExportError, match=r"issued .* is not a FHIR instant"):
        render_fhir(reports["normal"], "R4B", issued=datetime(2024, 1, 1, tzinfo=timezone(offset)))


# --- odd header values ---------------------------------------------------------------------

#: Header values FHIR does not allow: (keyword, value, the element the error names, and where
#: the value lands in the Bundle, to show that fhir.resources refuses it there too).
REFUSED = {
    "series UID with _": ("SeriesInstanceUID", "1.2.3_4", "ImagingStudy.series.uid",
                          "series.0.uid", "1.2.3_4"),
    "SOP class with two spaces": ("SOPClassUID", "1.2  3", "ImagingStudy.series.instance.sopClass",
                                  "series.0.instance.0.sopClass.code", "urn:oid:1.2  3"),
    "instance number over 2^31-1": ("InstanceNumber", "2147483648",
                                    "ImagingStudy.series.instance.number",
                                    "series.0.instance.0.number", 2147483648),
    "time zone past +14:00": ("TimezoneOffsetFromUTC", "+1500",
                              "StudyDate/StudyTime/TimezoneOffsetFromUTC",
                              "started", "2018-04-12T18:36:18+15:00"),
    "description of a vertical tab": ("StudyDescription", "\x0b", "ImagingStudy.description",
                                      "description", "\x0b"),
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", REFUSED)
def test_header_value_fhir_does_not_allow_is_one_export_error(bundles, tmp_path, case, version):
    keyword, value, element, path, in_bundle = REFUSED[case]
    report = apply_rules(
        make_findings(source=_copy_sample(tmp_path / "odd.dcm", **{keyword: value}))
    )
    with pytest.raises(ExportError) as info:
        render_fhir(report, version, ISSUED)
    message = str(info.value)
    assert message.startswith(f"FHIR {version} {element} of {report.study.sop_instance_uid} ")
    assert "\n" not in message
    # the referee agrees: the same value where it would land in a valid Bundle is refused
    bundle = json.loads(json.dumps(bundles["normal", version]))
    *parents, last = path.split(".")
    node = _resource(bundle, "ImagingStudy")
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = in_bundle
    with pytest.raises(ExportError):
        validate_bundle(bundle, version)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("version", VERSIONS)
def test_odd_header_values_fhir_allows_are_written_as_fhir_resources_would(tmp_path, version):
    values = {"PatientID": " 123", "StudyInstanceUID": "1.2.abc.4",
              "TimezoneOffsetFromUTC": "-0000"}  # fmt: skip
    source = _copy_sample(tmp_path / "odd.dcm", **values)
    bundle = render_fhir(apply_rules(make_findings(BILATERAL, source=source)), version, ISSUED)
    _assert_what_fhir_resources_writes(bundle, version)
    assert _resource(bundle, "Patient")["identifier"][0]["value"] == "123"
    assert _resource(bundle, "ImagingStudy")["started"] == "2018-04-12T18:36:18Z"
    if version == "R5":
        assert {s["studyUid"] for s in _resources(bundle, "ImagingSelection")} == {"1.2.abc.4"}
    leap = _copy_sample(tmp_path / "leap.dcm", StudyTime="235960", TimezoneOffsetFromUTC="+0000")
    bundle = render_fhir(apply_rules(make_findings(source=leap)), version, ISSUED)
    _assert_what_fhir_resources_writes(bundle, version)  # a leap second keeps its "+00:00"
    assert _resource(bundle, "ImagingStudy")["started"] == "2018-04-12T23:59:60+00:00"
