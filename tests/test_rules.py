"""Golden tests of the rule layer and the text report on hand-made region findings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _reports import make_findings

from anaxreport.cli import main
from anaxreport.errors import ConfigurationError
from anaxreport.rules import apply_rules, load_rules, load_thresholds
from anaxreport.vocab import FINDINGS, REGIONS, finding

GOLDEN = Path(__file__).parent / "golden"
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "pa_normal.dcm"


def texts(report) -> list[str]:
    return [s.text for s in report.findings]


def test_normal_study_says_so_in_every_section():
    report = apply_rules(make_findings())
    assert report.normal and report.findings == ()
    assert report.impression == (load_rules().normal_statement,)
    assert [s.to_dict()["text"] for s in report.sections] == [
        "The lungs are clear.",
        "No pleural effusion or pneumothorax.",
        "The cardiac silhouette and mediastinum are within normal limits.",
    ]
    assert not report.present_calls()
    assert {c.reason for c in report.calls} == {"below threshold"}


def test_left_and_right_merge_into_bilateral():
    report = apply_rules(make_findings({
        ("right lung", "pleural effusion"): 0.9,
        ("left lung", "pleural effusion"): 0.95,
        ("right lower lung zone", "consolidation"): 0.6,
        ("left lower lung zone", "consolidation"): 0.7,
        ("left upper lung zone", "consolidation"): 0.55,
    }))  # fmt: skip
    assert texts(report) == [
        "Probable bilateral consolidation in the lower lung zones.",
        "Probable consolidation in the left upper lung zone.",
        "Bilateral pleural effusions.",
    ]
    effusion = report.findings[-1]
    assert effusion.laterality == "bilateral"
    assert [r.name for r in effusion.regions] == ["right lung", "left lung"]
    assert effusion.probability == 0.9  # the least sure side


def test_most_specific_region_wins_unless_the_whole_lung_is_involved():
    zone = apply_rules(make_findings({
        ("right lung", "lung opacity"): 0.9,
        ("right lower lung zone", "lung opacity"): 0.95,
    }))  # fmt: skip
    assert texts(zone) == ["Opacity in the right lower lung zone."]
    assert [r.name for r in zone.findings[0].regions] == ["right lower lung zone"]
    # the lung stays present at region level (SR, FHIR) even when the statement names the zone
    assert zone.call("right lung", "lung opacity").present
    whole = apply_rules(make_findings({
        ("left lung", "lung opacity"): 0.9,
        ("left upper lung zone", "lung opacity"): 0.9,
        ("left mid lung zone", "lung opacity"): 0.9,
        ("left lower lung zone", "lung opacity"): 0.9,
    }))  # fmt: skip
    assert texts(whole) == ["Opacity in the left lung."]
    lung_only = apply_rules(make_findings({("right lung", "pneumothorax"): 0.9}))
    assert texts(lung_only) == ["Right pneumothorax."]


def test_implausible_findings_are_suppressed():
    report = apply_rules(make_findings({
        ("right lower lung zone", "enlarged cardiac silhouette"): 0.99,
        ("trachea", "pleural effusion"): 0.99,
        ("mediastinum", "lung opacity"): 0.8,  # allowed there, but not confident enough
        ("cardiac silhouette", "enlarged cardiac silhouette"): 0.9,
    }))  # fmt: skip
    assert texts(report) == ["Enlarged cardiac silhouette."]
    for region, name in [
        ("right lower lung zone", "enlarged cardiac silhouette"),
        ("trachea", "pleural effusion"),
        ("mediastinum", "lung opacity"),
    ]:
        call = report.call(region, name)
        assert not call.present and call.reason == "not plausible in this region"
    confident = apply_rules(make_findings({("mediastinum", "lung opacity"): 0.95}))
    assert texts(confident) == ["Opacity in the mediastinum."]


def test_certainty_bands_impression_order_and_unlocated_disease():
    report = apply_rules(make_findings({
        ("left lower lung zone", "atelectasis"): 0.97,
        ("right apical zone", "pneumothorax"): 0.55,
        ("left hilar structures", "fluid overload/heart failure"): 0.3,
        ("right hilar structures", "fluid overload/heart failure"): 0.52,
    }), thresholds={"fluid overload/heart failure": 0.25})  # fmt: skip
    assert report.impression == (
        "Probable pneumothorax in the right apical zone.",
        "Probable findings of fluid overload or heart failure.",
        "Atelectasis in the left lower lung zone.",
    )
    heart = report.findings[-1]
    assert heart.regions == () and heart.laterality == "" and heart.probability == 0.52
    assert [s.key for s in report.sections if s.statements] == [
        "lungs",
        "pleura",
        "heart_mediastinum",
    ]


def test_regions_without_a_box_are_not_reported():
    angle = "right costophrenic angle"
    report = apply_rules(make_findings({(angle, "pleural effusion"): 0.9}, missing=(angle,)))
    assert report.normal
    assert report.call("right costophrenic angle", "pleural effusion").reason == "region not found"
    assert "Not localised by the model (no findings reported there): right costophrenic angle." in (
        report.to_text()
    )


def test_threshold_file_and_rules_thresholds_override_the_model(tmp_path):
    findings = make_findings({("left lung", "pleural effusion"): 0.7})
    assert texts(apply_rules(findings)) == ["Probable left pleural effusion."]
    strict = tmp_path / "thresholds.json"
    strict.write_text(json.dumps({"pleural effusion": 0.8, "L6": 0.3}))
    loaded = load_thresholds(strict)
    assert loaded == {finding("pleural effusion"): 0.8, finding("pneumothorax"): 0.3}
    report = apply_rules(findings, thresholds=loaded)
    assert report.normal and report.thresholds[1] == 0.8 and report.thresholds[5] == 0.3
    # a rules file's [thresholds] replaces the model's; the user's file replaces both
    rules_text = (Path(__file__).resolve().parents[1] / "templates" / "rules.toml").read_text()
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(rules_text.replace("[thresholds]\n", '[thresholds]\n"L2" = 0.75\n'))
    rules = load_rules(rules_file)
    assert apply_rules(findings, rules).normal
    assert not apply_rules(findings, rules, {"pleural effusion": 0.6}).normal
    assert apply_rules(findings, rules).rules.sha256 != load_rules().info.sha256
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pleural effusions": 0.5}))
    with pytest.raises(ConfigurationError, match="unknown finding 'pleural effusions'"):
        load_thresholds(bad)
    bad.write_text(json.dumps({"pleural effusion": 1.5}))
    with pytest.raises(ConfigurationError, match=r"pleural effusion: expected a probability"):
        load_thresholds(bad)


def test_cli_thresholds_and_template_options(tmp_path, capsys):
    thresholds = tmp_path / "t.toml"
    thresholds.write_text('"enlarged cardiac silhouette" = 0.0\n"pneumothorax" = 1.0\n')
    template = tmp_path / "mine.j2"
    template.write_text(
        "{{ study.patient_id }}|{% for line in impression %}{{ line }}{% endfor %}|"
        "{{ provenance.disclaimer[:8] }}\n"
    )
    assert main([str(SAMPLE), "--thresholds", str(thresholds), "--template", str(template)]) == 0
    patient, impression, disclaimer = capsys.readouterr().out.strip().split("|")
    assert patient == "16720797" and disclaimer == "Research"
    assert impression == "Possible enlarged cardiac silhouette."  # forced on; pneumothorax off


def test_custom_template_errors_are_one_line(tmp_path):
    report = apply_rules(make_findings())
    typo = tmp_path / "typo.j2"
    typo.write_text("line one\n{{ report.impresion }}\n")
    with pytest.raises(ConfigurationError, match=r"typo\.j2.*impresion") as info:
        report.to_text(typo)
    assert "\n" not in str(info.value)
    escape = tmp_path / "escape.j2"  # the sandbox keeps templates inside the report
    escape.write_text("{{ report.__class__.__init__.__globals__ }}")
    with pytest.raises(ConfigurationError, match="template error"):
        report.to_text(escape)
    with pytest.raises(ConfigurationError, match="cannot read template"):
        report.to_text(tmp_path / "absent.j2")


def test_shipped_text_report_golden():
    report = apply_rules(make_findings({
        ("right lung", "pleural effusion"): 0.9,
        ("left lung", "pleural effusion"): 0.6,
        ("cardiac silhouette", "enlarged cardiac silhouette"): 0.93,
        ("right lower lung zone", "lung opacity"): 0.4,
    }, threshold=0.3))  # fmt: skip
    assert report.to_text() == (GOLDEN / "effusions_cardiomegaly.txt").read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('"lung" = [', '"lungs" = ['),
         "hierarchy.parents.lungs: unknown region"),
        (lambda t: t.replace('section = "pleura"\nweight = 100', 'section = "belly"\nweight = 100'),
         "findings.pneumothorax.section: 'belly'"),
        (lambda t: t[: t.index('[findings."atelectasis"]')], r"no rule for \['atelectasis'\]"),
        (lambda t: t.replace("from = 0.5", "from = 0.0"), "strictly increasing"),
        (lambda t: t + "\n[extra]\n", r"unknown top-level keys \['extra'\]"),
        (lambda t: t.replace("weight = 100", 'weight = "high"'), "weight: expected int"),
        (lambda t: t + "\n[[", "not a valid TOML rules file"),
    ],
)  # fmt: skip
def test_bad_rules_files_name_the_key(tmp_path, edit, message):
    text = (Path(__file__).resolve().parents[1] / "templates" / "rules.toml").read_text()
    path = tmp_path / "rules.toml"
    path.write_text(edit(text))
    with pytest.raises(ConfigurationError, match=message):
        load_rules(path)


def test_every_region_and_finding_has_one_call_in_order():
    report = apply_rules(make_findings({("trachea", "pneumonia"): 0.99}))
    assert len(report.calls) == len(REGIONS) * len(FINDINGS)
    assert report.call("Trach", "L9").probability == 0.99
    trachea = report.region_calls("trachea")
    assert trachea == tuple(report.call("trachea", f) for f in FINDINGS)
    assert {c.region.name for c in trachea} == {"trachea"}
    assert report.to_dict()["present"] == []


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_a_probability_outside_0_1_is_refused_by_name(value):
    from anaxreport.report import RegionCall
    from anaxreport.vocab import region

    with pytest.raises(ValueError, match=r"^right lung pneumonia probability must lie in \[0, 1\]"):
        RegionCall(region("right lung"), finding("pneumonia"), value, 0.5, False, "below threshold")
    with pytest.raises(ValueError, match=r"^pneumonia threshold must lie in \[0, 1\]"):
        RegionCall(region("right lung"), finding("pneumonia"), 0.2, value, False, "below threshold")
