"""Batch runs over folders, DICOMDIRs and bad files: summary, refusals, exit status, threads."""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
from pathlib import Path

import pydicom
import pytest
from _dicom_factory import acceptance_files, gradient, make_dataset, write
from _models import tiny_checkpoint
from pydicom.fileset import FileSet

from anaxreport.batch import RenderOptions, find_inputs, run_batch
from anaxreport.cli import main
from anaxreport.reporter import Reporter

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.json")


@pytest.fixture()
def tree(tmp_path) -> Path:
    """good/a.dcm, good/deeper/b.dcm, bad/lateral.dcm, bad/notes.txt, .hidden/c.dcm"""
    root = tmp_path / "in"
    for folder in ("good/deeper", "bad", ".hidden"):
        (root / folder).mkdir(parents=True)
    write(make_dataset(gradient(90, 100)), root / "good" / "a.dcm")
    write(make_dataset(gradient(100, 90)), root / "good" / "deeper" / "b.dcm")
    write(make_dataset(gradient(90, 90), ViewPosition="LL"), root / "bad" / "lateral.dcm")
    (root / "bad" / "notes.txt").write_text("not a radiograph\n")
    write(make_dataset(gradient(90, 90)), root / ".hidden" / "c.dcm")
    return root


def _summary(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {Path(row["source"]).name: row for row in csv.DictReader(handle)}


def test_a_folder_batch_reports_the_good_and_lists_the_bad(checkpoint, tree, tmp_path, capsys):
    out = tmp_path / "out"
    status = main([str(tree), "--format", "json", "-o", str(out), "--model", str(checkpoint)])
    rows = _summary(out / "summary.csv")
    assert set(rows) == {"a.dcm", "b.dcm", "lateral.dcm", "notes.txt"}  # hidden folder skipped
    assert rows["a.dcm"]["status"] == rows["b.dcm"]["status"] == "reported"
    assert rows["lateral.dcm"]["status"] == "refused" and rows["lateral.dcm"]["exit_code"] == "7"
    # not DICOM but found by the walk: listed, not an error
    assert rows["notes.txt"]["status"] == "skipped" and rows["notes.txt"]["reason"] == "not-dicom"
    # documented rule: the status of the first input (in walk order) refused or failed
    assert status == 7
    assert len(capsys.readouterr().err.splitlines()) == 1
    # named explicitly, a non-DICOM file is a failure
    named = [str(tree / "bad" / "notes.txt"), "-o", str(tmp_path / "o2"), "--format", "json"]
    assert main([*named, "--model", str(checkpoint)]) == 5
    for name in ("a.dcm", "b.dcm"):
        uid = rows[name]["sop_instance_uid"]
        assert rows[name]["outputs"] == f"{uid}.json"
        assert len(json.loads((out / f"{uid}.json").read_text())["regions"]) == 18
    refusal = json.loads((out / rows["lateral.dcm"]["outputs"]).read_text())
    assert refusal["status"] == "refused" and refusal["schema"] == "anaxreport.refusal/1"
    assert (
        refusal["sop_instance_uid"] == pydicom.dcmread(tree / "bad" / "lateral.dcm").SOPInstanceUID
    )
    assert not list(out.glob(".*partial"))


def test_dicomdir_is_followed_and_files_are_not_counted_twice(tree, tmp_path):
    media = tmp_path / "media"
    fileset = FileSet()
    for name in ("a.dcm", "deeper/b.dcm"):
        fileset.add(pydicom.dcmread(tree / "good" / name))
    fileset.write(media)
    inputs = find_inputs([media / "DICOMDIR", media])
    assert len(inputs) == 2 and all(p.name != "DICOMDIR" for p in inputs)
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in inputs}
    assert uids == {
        pydicom.dcmread(tree / "good" / n).SOPInstanceUID for n in ("a.dcm", "deeper/b.dcm")
    }


def test_threads_give_the_same_outputs_and_summary_json(checkpoint, tree, tmp_path):
    shutil.rmtree(tree / "bad")
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        summary = tmp_path / f"summary{workers}.json"
        assert main([str(tree), "--format", "json", "-o", str(out), "--model", str(checkpoint),
                     "--workers", str(workers), "--summary", str(summary)]) == 0  # fmt: skip
        outs[workers] = {p.name: json.loads(p.read_text()) for p in out.glob("*.json")}
        assert [row["status"] for row in json.loads(summary.read_text())] == ["reported"] * 2
    assert outs[1] == outs[2]


def test_a_batchs_workers_run_one_forward_pass_at_a_time(checkpoint, tree, tmp_path):
    """A pass takes every core: a second worker reads and renders meanwhile, never a second
    pass beside it."""
    shutil.rmtree(tree / "bad")
    reporter = Reporter.from_pretrained(checkpoint)
    model, lock, running, most, calls = reporter.model, threading.Lock(), [0], [0], [0]

    class Watched:
        runtime, head = model.runtime, model.head

        def __call__(self, images, explain=False):
            with lock:
                running[0] += 1
                most[0], calls[0] = max(most[0], running[0]), calls[0] + 1
            time.sleep(0.05)  # long enough for the other worker to arrive
            try:
                return model(images, explain=explain)
            finally:
                with lock:
                    running[0] -= 1

    reporter.model = Watched()
    inputs = find_inputs([tree]) * 2
    outcomes = run_batch(reporter, inputs, RenderOptions(formats=("json",)), tmp_path, 2,
                         batch_size=1)  # fmt: skip
    assert [o.status for o in outcomes] == ["reported"] * len(inputs)
    assert calls[0] == len(inputs) and most[0] == 1


def test_chunks_of_any_size_give_each_study_its_own_report(checkpoint, tree, tmp_path, capsys):
    """Studies share model passes in chunks (--batch-size); a refusal in a chunk stays its own,
    and each report is the one its study gets alone (to float rounding)."""
    write(make_dataset(gradient(120, 90)), tree / "good" / "c.dcm")  # another padded size
    summaries, reports = {}, {}
    for size in ("1", "2", "5"):
        out = tmp_path / f"out{size}"
        argv = [str(tree), "--format", "json", "-o", str(out), "--model", str(checkpoint)]
        assert main([*argv, "--batch-size", size]) == 7  # the lateral film
        summaries[size] = _summary(out / "summary.csv")
        reports[size] = {
            row["sop_instance_uid"]: json.loads((out / row["outputs"]).read_text())
            for row in summaries[size].values()
            if row["status"] == "reported"
        }
    assert summaries["1"] == summaries["2"] == summaries["5"]
    # in the order of the inputs, though chunks are formed in order of padded size
    walked = [str(p) for p in find_inputs([tree])]
    assert all(list(summaries[size]) == [Path(p).name for p in walked] for size in summaries)
    assert len(reports["1"]) == 3
    for size in ("2", "5"):
        assert reports[size].keys() == reports["1"].keys()
        for uid, alone in reports["1"].items():
            together = reports[size][uid]
            assert together["present"] == alone["present"]
            for a, b in zip(alone["regions"], together["regions"], strict=True):
                assert a["found"] == b["found"]
                assert (a["box"] is None) == (b["box"] is None)
                assert a["box"] is None or a["box"] == pytest.approx(b["box"], abs=0.02)
                assert a["probabilities"] == pytest.approx(b["probabilities"], abs=2e-4)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tree), "-o", str(tmp_path / "o0"), "--batch-size", "0"])
    assert exit_info.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_cli_gate_file_changes_what_is_refused(checkpoint, tree, tmp_path):
    gate = tmp_path / "gate.toml"
    gate.write_text('[gate]\nmodalities = ["DX"]\n')  # the factory's images are CR
    out = tmp_path / "out"
    argv = [str(tree / "good"), "--format", "json", "-o", str(out), "--model", str(checkpoint)]
    assert main([*argv, "--gate", str(gate)]) == 7
    rows = _summary(out / "summary.csv")
    assert {row["reason"] for row in rows.values()} == {"bad-modality"}
    gate.write_text('[gate]\nmodalities = ["DX"\n')
    assert main([*argv, "--gate", str(gate)]) == 9


def test_a_batch_of_every_bad_kind_and_good_files(checkpoint, tmp_path):
    (tmp_path / "in").mkdir()
    files = acceptance_files(tmp_path / "in")
    out = tmp_path / "out"
    status = main([str(tmp_path / "in"), "--format", "all", "-o", str(out),
                   "--model", str(checkpoint)])  # fmt: skip
    rows = _summary(out / "summary.csv")
    assert {rows[p.name]["reason"] for p in files.values()} == set(files)
    good = rows[files[""].name]
    assert good["status"] == "reported" and len(good["outputs"].split()) == 5
    assert all((out / name).is_file() for name in good["outputs"].split())
    first_bad = next(row for row in rows.values() if row["status"] != "reported")
    assert status == int(first_bad["exit_code"]) != 0


def test_refusals_are_written_as_json_and_as_a_cancelled_fhir_report(
    checkpoint, tmp_path, fhir_validate
):
    from fhir.resources.R4B.bundle import Bundle as BundleR4B

    (tmp_path / "in").mkdir()
    files = acceptance_files(tmp_path / "in")
    out = tmp_path / "out"
    main([str(tmp_path / "in"), "--format", "all", "-o", str(out), "--model", str(checkpoint)])
    rows = _summary(out / "summary.csv")
    bundles = []
    for reason in ("lateral-view", "not-chest", "colour-image", "multi-frame"):
        row = rows[files[reason].name]
        source = pydicom.dcmread(files[reason], stop_before_pixels=True)
        assert row["status"] == "refused" and row["sop_instance_uid"] == source.SOPInstanceUID
        json_name, fhir_name = row["outputs"].split()
        refusal = json.loads((out / json_name).read_text())
        assert (refusal["reason"], refusal["patient_id"]) == (reason, source.PatientID)
        bundle = json.loads((out / fhir_name).read_text())
        BundleR4B.model_validate(bundle)
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
        assert kinds == ["Patient", "Device", "ImagingStudy", "DiagnosticReport"]
        report = bundle["entry"][3]["resource"]
        assert report["status"] == "cancelled" and reason in report["conclusion"]
        study = bundle["entry"][2]["resource"]
        assert study["series"][0]["instance"][0]["uid"] == source.SOPInstanceUID
        bundles.append(out / fhir_name)
    for name, result in fhir_validate(bundles).items():
        assert result["schema"] == [] and result["fhirjs"]["errors"] == [], name


def test_a_refusal_makes_valid_r4b_and_r5_bundles_and_deterministic_ids():
    from _reports import PROVENANCE
    from fhir.resources.bundle import Bundle as BundleR5
    from fhir.resources.R4B.bundle import Bundle as BundleR4B

    from anaxreport.ingest import StudyIdentity
    from anaxreport.report import Refusal

    header = pydicom.dcmread(SAMPLES / "pa_normal.dcm", stop_before_pixels=True)
    refusal = Refusal(StudyIdentity.from_dataset(header), "lateral-view", "x.dcm: lateral view",
                      "x.dcm", PROVENANCE, header=header)  # fmt: skip
    for version, model in (("R4B", BundleR4B), ("R5", BundleR5)):
        bundle = refusal.to_fhir(version)
        model.model_validate(bundle)
        again = refusal.to_fhir(version)
        assert [e["fullUrl"] for e in bundle["entry"]] == [e["fullUrl"] for e in again["entry"]]
    assert refusal.to_dict()["schema"] == "anaxreport.refusal/1"
