"""The three training stages end to end on a few phantoms, at toy size (not a quality test)."""

import json

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
