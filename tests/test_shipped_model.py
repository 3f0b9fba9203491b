"""The shipped checkpoint on the shipped samples: it loads, says what it is, and finds things."""

import json
from pathlib import Path

import pytest

from anaxreport import Reporter
from anaxreport.cli import main
from anaxreport.data.imagenome import read_scene_graph
from anaxreport.geometry import BoundingBox

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def reporter() -> Reporter:
    return Reporter.from_pretrained()


def test_info_of_the_default_checkpoint(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"]["gcn_sizes"] == [512, 1024]
    assert info["tau"] == 0.5 and info["adjacency_rule"] == "paper"
    assert "phantom" in info["provenance"]["training_data"]
    assert info["metrics"]["test"]["mean_auc"] > 0.85


@pytest.mark.parametrize("name", ["pa_effusion_right", "ap_pneumonia_left", "pa_normal"])
def test_boxes_match_the_ground_truth(reporter, name):
    truth = read_scene_graph(SAMPLES / f"{name}_SceneGraph.json")
    report = reporter.run(SAMPLES / f"{name}.dcm")
    ious = [
        result.box.iou(true_box) if result.box else 0.0
        for result, true_box in zip(report.regions, truth.boxes, strict=True)
        if isinstance(true_box, BoundingBox)
    ]
    assert sum(ious) / len(ious) > 0.8


def test_effusion_is_found_on_the_right_side(reporter):
    effusion = reporter.run(SAMPLES / "pa_effusion_right.dcm")
    normal = reporter.run(SAMPLES / "pa_normal.dcm")
    right = effusion.region("right costophrenic angle").probability("pleural effusion")
    left = effusion.region("left costophrenic angle").probability("pleural effusion")
    assert right > 0.5 > left
    assert normal.region("right costophrenic angle").probability("pleural effusion") < 0.5


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pa_normal", ()),
        ("pa_effusion_right", (("pleural effusion", "right"),)),
        ("pa_cardiomegaly_edema", (("pulmonary edema/hazy opacity", "bilateral"),
                                   ("fluid overload/heart failure", ""),
                                   ("pleural effusion", "bilateral"),
                                   ("enlarged cardiac silhouette", ""),
                                   ("lung opacity", "bilateral"))),
    ],
)  # fmt: skip
def test_the_calibrated_reports_of_the_readme_samples(reporter, name, expected):
    report = reporter.run(SAMPLES / f"{name}.dcm")
    said = tuple((s.finding.name, s.laterality) for s in sorted(
        report.findings, key=lambda s: (-s.weight, -s.probability)))  # fmt: skip
    assert said == expected
    assert report.normal == (not expected)


def test_studies_predicted_together_get_the_findings_they_get_alone(reporter):
    """The batch path (``predict_many``) shares model passes but not padding: inputs that pad to
    different sizes go through apart (padded together, pa_normal's boxes move by 2.5 px)."""
    radiographs = [reporter.read(path) for path in sorted(SAMPLES.glob("*.dcm"))]
    radiographs += radiographs[:2]  # a study twice in one batch is no special case
    together = reporter.predict_many(radiographs)
    assert [f.study for f in together] == [r.identity for r in radiographs]
    for radiograph, found in zip(radiographs, together, strict=True):
        alone = reporter.predict(radiograph)
        for a, b in zip(alone.regions, found.regions, strict=True):
            assert a.region == b.region and (a.box is None) == (b.box is None)
            if a.box is not None:
                assert max(abs(x - y) for x, y in zip(vars(a.box).values(), vars(b.box).values(),
                                                      strict=True)) < 0.01  # fmt: skip
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert a.probabilities == pytest.approx(b.probabilities, abs=1e-4)
    assert reporter.predict_many([]) == []
    sizes = [reporter.model_input_size(r.rows, r.columns) for r in radiographs]
    assert sorted(set(sizes)) == [(224, 256), (256, 224), (256, 256)]


def test_evaluation_scores_what_the_reporter_reports(reporter):
    """``anaxreport evaluate`` and ``calibrate`` batch the samples by padded size, as the
    reporter does (padding sizes together moved the probabilities by up to 6e-3 here)."""
    from types import SimpleNamespace

    import numpy as np

    from anaxreport.evaluate import predict_samples
    from anaxreport.model.preprocess import to_model_input

    radiographs = [reporter.read(path) for path in sorted(SAMPLES.glob("*.dcm"))]
    radiographs += radiographs[:3]
    samples = []
    for radiograph in radiographs:
        image, resize = to_model_input(radiograph.pixels, 256)
        samples.append(SimpleNamespace(image=image[:1], resize=resize))
    probabilities, boxes = predict_samples(reporter.model, samples, batch_size=8)
    for index, found in enumerate(reporter.predict_many(radiographs)):
        expected = np.array([r.probabilities for r in found.regions])
        np.testing.assert_allclose(probabilities[index], expected, atol=1e-5)
        for region, box in zip(found.regions, boxes[index], strict=True):
            assert (region.box is None) == bool(np.isnan(box).all())
            if region.box is not None:
                np.testing.assert_allclose(box, region.box.as_tuple(), atol=1e-3)
