"""The three training stages end to end on a few phantoms, at toy size (not a quality test)."""

import json
import shutil

import numpy as np
import pytest

from anaxreport.cli import main
from anaxreport.data.phantom import generate_phantoms
from anaxreport.model.checkpoint import load_checkpoint
from anaxreport.reporter import Reporter
from anaxreport.vocab import REGION_NAMES


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    generate_phantoms(root / "data", 10, seed=7)
    out = root / "model" / "toy.json"
    argv = [
        "train", "--data", str(root / "data"), "--out", str(out),
        "--backbone", "resnet18", "--fpn-channels", "16", "--image-size", "96",
        "--detector-epochs", "1", "--head-epochs", "2", "--roi-samples", "32",
        "--rpn-proposals", "50", "--batch-size", "2", "--training-data", "toy phantoms seed 7",
    ]  # fmt: skip
    assert main(argv) == 0
    return root, out


def test_training_writes_a_loadable_checkpoint_with_provenance(trained):
    _, out = trained
    model, info = load_checkpoint(out)
    assert not model.training
    assert info.provenance["training_data"] == "toy phantoms seed 7"
    assert info.provenance["command"].startswith("anaxreport train --data")
    assert set(info.provenance["images"]) == {"train", "valid", "test"}
    test = info.metrics["test"]
    assert test["images"] == info.provenance["images"]["test"]
    assert set(test["region_iou"]) == set(REGION_NAMES)
    adjacency = np.array(info.config.adjacency)
    assert adjacency.shape == (18, 18) and np.all(np.diag(adjacency) == 1)
    assert len(info.config.thresholds) == 9
    calibration = info.provenance["calibration"]
    assert calibration["rule"] == "youden@image" and calibration["split"] == "valid"
    assert calibration["images"] == info.provenance["images"]["valid"]
    assert [p["threshold"] for p in calibration["operating_points"]] == list(info.config.thresholds)
    # resume state and stage files live in the work folder beside the checkpoint
    assert (out.parent / "toy.work" / "detector.safetensors").is_file()


def test_trained_checkpoint_runs_and_evaluates(trained, capsys):
    root, out = trained
    sample = sorted((root / "data" / "files").rglob("*.dcm"))[0]
    report = Reporter.from_pretrained(out).run(sample)
    assert len(report.regions) == 18
    assert main(["evaluate", "--data", str(root / "data"), "--model", str(out),
                 "--json", str(root / "scores.json")]) == 0  # fmt: skip
    assert "AVG" in capsys.readouterr().out
    scores = json.loads((root / "scores.json").read_text())
    assert set(scores) >= {"mean_auc", "finding_auc", "mean_iou", "region_iou", "auc"}


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_mimic_cxr_jpg_images_are_read_for_evaluation(trained, tmp_path, capsys, suffix):
    """Chest ImaGenome's images come from MIMIC-CXR-JPG: 8-bit display grey levels in files
    named as the split's DICOM path with .jpg. The same data set with those in place of its
    DICOM files scores as the DICOM one does (to 8-bit rounding; JPEG's loss on top)."""
    from PIL import Image

    from anaxreport.ingest import read_radiograph

    root, out = trained
    data = tmp_path / "jpg"
    shutil.copytree(root / "data", data)
    for dicom in sorted((data / "files").rglob("*.dcm")):
        grey = np.rint(read_radiograph(dicom).pixels * 255).astype(np.uint8)
        Image.fromarray(grey).save(dicom.with_suffix(".jpg"), format=suffix[1:].upper()
                                   .replace("JPG", "JPEG"), quality=95)  # fmt: skip
        dicom.unlink()
    scores = {}
    for name, folder in (("dicom", root / "data"), ("picture", data)):
        assert main(["evaluate", "--data", str(folder), "--model", str(out),
                     "--json", str(tmp_path / f"{name}.json")]) == 0  # fmt: skip
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())
    capsys.readouterr()
    assert scores["picture"]["images"] == scores["dicom"]["images"] > 0
    tolerance = 0.02 if suffix == ".png" else 0.1
    assert scores["picture"]["mean_iou"] == pytest.approx(scores["dicom"]["mean_iou"],
                                                          abs=tolerance)  # fmt: skip


def test_an_unreadable_picture_is_an_undecodable_input(tmp_path):
    from anaxreport.data.loader import read_pixels
    from anaxreport.errors import InvalidInputError

    broken = tmp_path / "x.jpg"
    broken.write_bytes(b"\xff\xd8 not a JPEG")
    with pytest.raises(InvalidInputError) as info:
        read_pixels(broken)
    assert info.value.reason == "undecodable" and "x.jpg" in str(info.value)
