"""Threshold calibration rules, the calibrate and adjacency commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _models import tiny_checkpoint

from anaxreport.calibrate import CalibrationRule, choose_thresholds, operating_points
from anaxreport.cli import main
from anaxreport.data.imagenome import ImaGenomeDataset
from anaxreport.data.phantom import generate_phantoms
from anaxreport.errors import ConfigurationError
from anaxreport.model.checkpoint import read_checkpoint_info
from anaxreport.model.graph import build_adjacency
from anaxreport.vocab import FINDING_NAMES, REGION_NAMES


def _toy(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[n, 1, 9] labels with 10 % prevalence and scores that separate them imperfectly."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 1, 9)) < 0.1).astype(np.float32)
    scores = np.clip(0.3 * labels + rng.normal(0.3, 0.15, labels.shape), 0, 1)
    return labels, scores


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_sensitivity_and_specificity_targets_are_met_as_tightly_as_possible(target):
    labels, scores = _toy()
    for kind in ("sensitivity", "specificity"):
        thresholds = choose_thresholds(labels, scores, CalibrationRule(kind, target))
        points = operating_points(labels, scores, thresholds)
        for f, point in enumerate(points):
            achieved = getattr(point, kind)
            assert achieved >= target, (kind, f)
            # the next candidate threshold in the permissive direction would be worse
            y, p = labels[..., f].ravel().astype(bool), scores[..., f].ravel()
            chosen = p[p >= point.threshold].min()  # the score the threshold was taken from
            if kind == "sensitivity":  # the next higher score loses sensitivity below target
                higher = p[p > chosen]
                if higher.size:
                    assert (p[y] >= higher.min()).mean() < target
            else:  # the next lower score loses specificity below target
                lower = p[p < chosen]
                if lower.size:
                    assert (p[~y] < lower.max()).mean() < target


def test_youden_maximises_j_and_degenerate_findings_get_the_default():
    labels, scores = _toy()
    labels[..., 8] = 0  # a finding that never occurs
    thresholds = choose_thresholds(labels, scores, CalibrationRule())
    assert thresholds[8] == 0.5
    y, p = labels[..., 0].ravel().astype(bool), scores[..., 0].ravel()

    def j(t: float) -> float:
        return (p[y] >= t).mean() - (p[~y] >= t).mean()

    assert j(thresholds[0]) == pytest.approx(max(j(t) for t in np.unique(p)), abs=1e-9)


@pytest.mark.parametrize(
    ("text", "message"),
    [("youden=0.5", "takes no target"), ("sensitivity", "needs a target"),
     ("specificity=1.5", "not in"), ("f1=0.9", "not one of"),
     ("sensitivity=x", "no number")],
)  # fmt: skip
def test_bad_rules_are_configuration_errors(text, message):
    with pytest.raises(ConfigurationError, match=message):
        CalibrationRule.parse(text)
    assert str(CalibrationRule.parse("Specificity = 0.98")) == "specificity=0.98@image"
    assert CalibrationRule.parse("youden@region") == CalibrationRule("youden", None, "region")
    with pytest.raises(ConfigurationError, match="level 'pixel'"):
        CalibrationRule.parse("youden@pixel")


def test_image_level_counts_each_image_once_by_its_highest_region():
    # 4 images x 3 regions, one finding: image 0 and 1 have it (in region 0), 2 and 3 do not;
    # region 2 of every image scores high for no reason
    labels = np.zeros((4, 3, 1))
    labels[[0, 1], 0, 0] = 1
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.1, 0.5], [0.1, 0.1, 0.5], [0.2, 0.1, 0.6]])[
        ..., None
    ]
    image = choose_thresholds(labels, scores, CalibrationRule.parse("youden@image"))
    region = choose_thresholds(labels, scores, CalibrationRule.parse("youden@region"))
    assert image == (0.8,) and region == (0.8,)
    (point,) = operating_points(labels, scores, image, "image")
    assert (point.positives, point.negatives, point.sensitivity, point.specificity) == (2, 2, 1, 1)
    (point,) = operating_points(labels, scores, (0.5,), "region")
    assert (point.positives, point.negatives) == (2, 10)
    assert point.precision == pytest.approx(2 / 6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    generate_phantoms(root / "data", 8, seed=3)
    return root, tiny_checkpoint(root / "model" / "tiny.json")


def test_calibrate_writes_thresholds_and_keeps_the_weights(setup, capsys):
    root, checkpoint = setup
    before = read_checkpoint_info(checkpoint)
    argv = ["calibrate", "--data", str(root / "data"), "--split", "all", "--model",
            str(checkpoint), "--rule", "specificity=0.9@region",
            "--json", str(root / "c.json")]  # fmt: skip
    assert main(argv) == 0  # without --write nothing changes
    assert read_checkpoint_info(checkpoint) == before
    assert "rule specificity=0.9@region on the all split (8 images)" in capsys.readouterr().out
    assert main([*argv, "--write"]) == 0
    capsys.readouterr()
    after = read_checkpoint_info(checkpoint)
    assert after.weights_sha256 == before.weights_sha256
    record = after.provenance["calibration"]
    assert record["rule"] == "specificity=0.9@region" and record["images"] == 8
    assert list(after.config.thresholds) == [p["threshold"] for p in record["operating_points"]]
    assert record == json.loads((root / "c.json").read_text())
    for point, old in zip(record["operating_points"], before.config.thresholds, strict=True):
        if point["positives"] and point["negatives"]:
            assert point["specificity"] >= 0.9, point
        else:  # nothing to calibrate on: the checkpoint's threshold stays
            assert point["threshold"] == old
    assert main(["info", "--json", "--model", str(checkpoint)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["provenance"]["calibration"]["rule"] == "specificity=0.9@region"
    assert list(info["thresholds"].values()) == list(after.config.thresholds)
    assert main(["calibrate", "--data", str(root / "data"), "--write"]) == 9  # no --model


def test_adjacency_command_matches_the_graph_module(setup, capsys):
    root, _ = setup
    out = root / "adjacency.json"
    assert main(["adjacency", "--data", str(root / "data"), "--split", "all", "--tau", "0.3",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    document = json.loads(out.read_text())
    labels = np.stack(
        [d[i][1].labels_array() for s in ("train", "valid", "test")
         for d in [ImaGenomeDataset(root / "data", s)] for i in range(len(d))]
    )  # fmt: skip
    assert document["adjacency"] == build_adjacency(labels, tau=0.3).tolist()
    assert document["regions"] == list(REGION_NAMES) and document["images"] == 8
    assert printed.splitlines()[0].startswith("right lung")
    assert len(FINDING_NAMES) == labels.shape[-1]
