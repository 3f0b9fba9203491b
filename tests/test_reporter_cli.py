"""Checkpoints, the Reporter and the CLI on a tiny random-weight model and real DICOM files."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from _dicom_factory import gradient, make_dataset, write
from _models import tiny_checkpoint

from anaxreport.cli import main
from anaxreport.errors import WeightsError
from anaxreport.model.anaxnet import AnaXNetOutput
from anaxreport.model.checkpoint import load_checkpoint
from anaxreport.reporter import Reporter
from anaxreport.vocab import FINDING_NAMES, REGION_NAMES

K, M = len(REGION_NAMES), len(FINDING_NAMES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.json", 32, 128)


@pytest.fixture()
def study(tmp_path) -> Path:
    return write(make_dataset(gradient(150, 110)), tmp_path / "study.dcm")


def test_checkpoint_round_trip_and_hash_check(checkpoint, tmp_path):
    model, info = load_checkpoint(checkpoint)
    assert info.config.name == "anaxnet-test"
    assert info.provenance["training_data"] == "random weights"
    assert not model.training
    # the folder and the .safetensors path resolve to the same checkpoint
    assert load_checkpoint(checkpoint.with_suffix(".safetensors"))[1] == info
    # a flipped byte in the weights fails the hash check, and no weight is used
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / checkpoint.name).write_text(checkpoint.read_text())
    data = bytearray(checkpoint.with_suffix(".safetensors").read_bytes())
    data[-10] ^= 0xFF
    weights = broken / checkpoint.with_suffix(".safetensors").name
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_checkpoint(broken / checkpoint.name)
    # the hash is checked first: a cut file is a hash mismatch, and it is unreadable once the
    # checkpoint records its hash
    weights.write_bytes(bytes(data[:1000]))
    with pytest.raises(WeightsError, match="sha256"):
        load_checkpoint(broken / checkpoint.name)
    record = json.loads(checkpoint.read_text())
    record["weights"]["sha256"] = hashlib.sha256(data[:1000]).hexdigest()
    (broken / checkpoint.name).write_text(json.dumps(record))
    with pytest.raises(WeightsError, match="unreadable safetensors"):
        load_checkpoint(broken / checkpoint.name)
    with pytest.raises(WeightsError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.json")


def test_weights_are_stored_in_half_precision(checkpoint):
    from safetensors import safe_open

    with safe_open(str(checkpoint.with_suffix(".safetensors")), "pt") as handle:
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys()}  # noqa: SIM118
    assert torch.float16 in dtypes and torch.float32 not in dtypes


class _FixedModel(torch.nn.Module):
    """Returns one fixed box per region in model-grid coordinates."""

    def __init__(self, box):
        super().__init__()
        self.box = torch.tensor(box, dtype=torch.float32)
        self.seen = []

    def forward(self, images):
        self.seen.append(tuple(images[0].shape))
        found = torch.ones(1, K, dtype=torch.bool)
        found[0, 3] = False
        return AnaXNetOutput(
            boxes=self.box.expand(1, K, 4).clone(),
            scores=torch.full((1, K), 0.9),
            found=found,
            logits=torch.zeros(1, K, M),
            attention=torch.full((1, K, K), 1 / K),
        )


@pytest.mark.parametrize(("rows", "columns"), [(300, 500), (500, 300), (64, 64), (1000, 257)])
def test_boxes_map_back_to_source_pixels(checkpoint, rows, columns):
    reporter = Reporter.from_pretrained(checkpoint)
    size = reporter.info.config.detector.image_size
    model_rows = round(rows * size / max(rows, columns))
    model_columns = round(columns * size / max(rows, columns))
    reporter.model = _FixedModel([0.0, 0.0, model_columns, model_rows])
    report = reporter.run(make_dataset(gradient(rows, columns)))
    assert reporter.model.seen == [(3, model_rows, model_columns)]
    whole = report.regions[0].box
    assert whole is not None
    np.testing.assert_allclose(whole.as_tuple(), (0, 0, columns, rows), atol=1e-3)
    assert report.regions[3].box is None and not report.regions[3].found
    # a box in the middle of the model grid scales by columns/model_columns, rows/model_rows
    reporter.model = _FixedModel([10.0, 20.0, 30.0, 40.0])
    box = reporter.run(make_dataset(gradient(rows, columns))).regions[0].box
    sx, sy = columns / model_columns, rows / model_rows
    np.testing.assert_allclose(box.as_tuple(), (10 * sx, 20 * sy, 30 * sx, 40 * sy), atol=1e-3)


def test_cli_json_has_18_regions_in_vocab_order(checkpoint, study, capsys):
    assert main([str(study), "--format", "json", "--model", str(checkpoint)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out["regions"]] == list(REGION_NAMES)
    for region in out["regions"]:
        assert list(region["probabilities"]) == list(FINDING_NAMES)
        assert all(0.0 <= p <= 1.0 for p in region["probabilities"].values())
        assert (region["box"] is None) == (not region["found"])
        assert region["box"] is None or len(region["box"]) == 4
        assert 0.0 <= region["score"] <= 1.0
    assert out["model"]["model_name"] == "anaxnet-test"
    assert out["model"]["weights_sha256"] == json.loads(checkpoint.read_text())["weights"]["sha256"]
    assert "Not for diagnostic use" in out["model"]["disclaimer"]
    assert out["study"]["sop_instance_uid"]


def test_cli_writes_every_format_named_by_sop_instance_uid(checkpoint, study, tmp_path):
    out = tmp_path / "out"
    assert main([str(study), "--format", "all", "-o", str(out), "--model", str(checkpoint)]) == 0
    uid = pydicom.dcmread(study).SOPInstanceUID
    names = sorted(p.name for p in out.iterdir())
    suffixes = (".txt", ".json", ".fhir.json", ".sr.dcm", ".gsps.dcm")
    assert names == sorted([*(f"{uid}{s}" for s in suffixes), "summary.csv"])
    assert len(json.loads((out / f"{uid}.json").read_text())["regions"]) == K
    assert "NOT FOR DIAGNOSTIC USE" in (out / f"{uid}.txt").read_text()
    assert json.loads((out / f"{uid}.fhir.json").read_text())["resourceType"] == "Bundle"
    for kind in ("sr", "gsps"):
        result = pydicom.dcmread(out / f"{uid}.{kind}.dcm")
        assert result.StudyInstanceUID == pydicom.dcmread(study).StudyInstanceUID


def test_cli_dicom_formats_need_a_folder(checkpoint, study, capsys):
    assert main([str(study), "--format", "sr", "--model", str(checkpoint)]) == 9
    assert "give -o FOLDER" in capsys.readouterr().err


def test_cli_batch_names_files_by_sop_instance_uid(checkpoint, tmp_path):
    # two inputs with the same file name must not overwrite each other's output
    studies = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        studies.append(write(make_dataset(gradient(90, 120)), tmp_path / folder / "image.dcm"))
    out = tmp_path / "out"
    assert main([*map(str, studies), "--format", "json", "-o", str(out),
                 "--model", str(checkpoint)]) == 0  # fmt: skip
    written = sorted(p.stem for p in out.glob("*.json"))
    expected = sorted(pydicom.dcmread(s).SOPInstanceUID for s in studies)
    assert written == expected


def test_info_json(checkpoint, capsys):
    assert main(["info", "--json", "--model", str(checkpoint)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"]["gcn_sizes"] == [512, 1024]
    assert info["tau"] == 0.5
    assert info["regions"] == list(REGION_NAMES)
    assert info["findings"] == list(FINDING_NAMES)
    assert len(info["adjacency"]) == K
    assert info["parameters"] > 1_000_000
    assert len(info["weights"]["sha256"]) == 64
    assert info["provenance"]["training_data"] == "random weights"


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, int]]:
    text = tmp_path / "notes.txt"
    text.write_text("not a radiograph\n")
    no_pixels = make_dataset()
    del no_pixels.PixelData
    return {
        "missing": (tmp_path / "absent.dcm", 4),
        "not dicom": (text, 5),
        "no pixels": (write(no_pixels, tmp_path / "header_only.dcm"), 6),
    }


def test_bad_input_gives_one_line_and_distinct_status(checkpoint, tmp_path, capsys):
    for path, status in _bad_inputs(tmp_path).values():
        assert main([str(path), "--model", str(checkpoint)]) == status
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and path.name in err and "Traceback" not in err


def test_bad_input_in_a_real_process(checkpoint, study, tmp_path):
    bad = _bad_inputs(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "anaxreport", str(bad["not dicom"][0]), "--model", str(checkpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 5
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1
    # one bad file in a batch does not stop the good one, and stderr only names the bad one
    out = tmp_path / "out"
    both = subprocess.run(
        [sys.executable, "-m", "anaxreport", str(bad["missing"][0]), str(study),
         "--format", "all", "-o", str(out), "--model", str(checkpoint)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert both.returncode == 4
    assert both.stderr.splitlines() == [f"anaxreport: {bad['missing'][0]}: no such file"]
    uid = pydicom.dcmread(study).SOPInstanceUID
    assert len(json.loads((out / f"{uid}.json").read_text())["regions"]) == K


def test_a_patient_name_beyond_ascii_prints_as_utf8_in_the_c_locale(checkpoint, tmp_path):
    """The FHIR Patient names the patient; stdout in the C locale (no UTF-8 mode) is ASCII."""
    ds = make_dataset(gradient(150, 110))
    ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 192", "Müller^Jürgen=山田^太郎"
    study = write(ds, tmp_path / "study.dcm")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "anaxreport", str(study), "--format", "fhir",
         "--model", str(checkpoint)],
        capture_output=True,
        env=env,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    bundle = json.loads(run.stdout.decode("utf-8"))
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    assert patient["name"][0]["family"] == "Müller"


def test_a_reader_that_leaves_early_gets_no_traceback(checkpoint, study):
    """``anaxreport ... | head``: the rest of the output goes nowhere, quietly, status 141 (a
    shell's for SIGPIPE); the output is more than a pipe holds, so the write must meet it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "anaxreport", *[str(study)] * 12, "--format", "fhir",
         "--model", str(checkpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout.readline().strip() == b"{"
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert err == ""


def test_usage_errors_and_the_version_answer_without_importing_torch():
    """torch's import is most of a cold start (2 s here): the CLI imports it when a model is
    needed, not to say its version or that an option is wrong."""
    code = (
        "import sys; from anaxreport.cli import main\n"
        "for argv in (['--version'], ['x.dcm', '--batch-size', '0']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "print('torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "False"


def test_corrupt_checkpoint_is_a_weights_error(tmp_path, study, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert main([str(study), "--model", str(tmp_path / "bad.json")]) == 8
    assert "not a valid anaxreport checkpoint" in capsys.readouterr().err


def test_cli_fhir_versions(checkpoint, study, capsys):
    for version, selection in (("R4B", False), ("R5", True)):
        args = [str(study), "--format", "fhir", "--fhir-version", version, "--thresholds"]
        thresholds = study.parent / "all.json"  # everything present: R5 selections appear
        thresholds.write_text(json.dumps({name: 0.0 for name in FINDING_NAMES}))
        assert main([*args, str(thresholds), "--model", str(checkpoint)]) == 0
        bundle = json.loads(capsys.readouterr().out)
        kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
        assert ("ImagingSelection" in kinds) is selection
        assert ("BodyStructure" in kinds) is selection


def test_cli_runtimes_agree_and_an_unknown_one_is_a_usage_error(checkpoint, study, capsys):
    """--runtime torch and the default (the ONNX Runtime engine) report the same study."""
    outputs = {}
    for runtime in ("torch", "auto"):
        args = [str(study), "--format", "json", "--model", str(checkpoint), "--runtime", runtime]
        assert main(args) == 0
        outputs[runtime] = json.loads(capsys.readouterr().out)["regions"]
    for ours, theirs in zip(outputs["auto"], outputs["torch"], strict=True):
        assert ours["found"] == theirs["found"]
        np.testing.assert_allclose(list(ours["probabilities"].values()),
                                   list(theirs["probabilities"].values()), atol=1e-4)  # fmt: skip
        if ours["box"] is not None:
            np.testing.assert_allclose(ours["box"], theirs["box"], atol=0.05)
    with pytest.raises(SystemExit) as exit_info:
        main([str(study), "--runtime", "tensorrt"])
    assert exit_info.value.code == 2  # argparse: a usage error
