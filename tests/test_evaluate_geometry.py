"""The paper's evaluation protocol and the box geometry it relies on."""

import math

import numpy as np
import pytest

from anaxreport.evaluate import box_iou, evaluate_arrays, roc_auc
from anaxreport.geometry import BoundingBox, Resize


def test_roc_auc_by_hand_and_against_scikit_learn():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # ties get half credit
    assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.3, 0.4]))
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(rng.random(200), 2)  # with ties
    assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s))


def test_paper_protocol_nan_mean_over_regions():
    # 2 regions, 2 findings; finding 1 never occurs in region 1 -> its AUC is undefined there
    labels = np.zeros((4, 2, 2))
    labels[:, 0, 0] = [0, 0, 1, 1]
    labels[:, 1, 0] = [0, 1, 0, 1]
    labels[:, 0, 1] = [1, 0, 0, 0]
    probs = np.zeros((4, 2, 2))
    probs[:, 0, 0] = [0.1, 0.2, 0.8, 0.9]  # AUC 1
    probs[:, 1, 0] = [0.9, 0.1, 0.8, 0.2]  # AUC 0
    probs[:, 0, 1] = [0.9, 0.1, 0.1, 0.1]  # AUC 1
    boxes = np.zeros((4, 2, 4))
    result = evaluate_arrays(labels, probs, boxes, boxes)
    np.testing.assert_allclose(result.finding_auc, [0.5, 1.0])
    assert result.mean_auc == pytest.approx(0.75)
    assert math.isnan(result.auc[1, 1])


def test_iou_counts_misses_as_zero_and_skips_missing_truth():
    truth = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [np.nan] * 4])
    pred = np.array([[0, 0, 10, 5], [np.nan] * 4, [0, 0, 1, 1]])
    iou = box_iou(pred, truth)
    assert iou[0] == pytest.approx(0.5)
    assert iou[1] == 0.0
    assert math.isnan(iou[2])
    assert BoundingBox(0, 0, 10, 10).iou(BoundingBox(0, 0, 10, 5)) == pytest.approx(0.5)


def test_resize_round_trip_on_non_square_images():
    resize = Resize.keep_aspect((600, 900), 256)
    assert resize.model_size == (171, 256)
    box = BoundingBox(90.0, 60.0, 450.0, 540.0)
    back = resize.to_source(resize.to_model(box))
    np.testing.assert_allclose(back.as_tuple(), box.as_tuple(), atol=1e-9)
    # model-grid boxes beyond the image are clipped to the source extent
    assert resize.to_source((-5.0, -5.0, 300.0, 200.0)).as_tuple() == (0.0, 0.0, 900.0, 600.0)
    with pytest.raises(ValueError):
        BoundingBox(5, 0, 1, 1)
    assert BoundingBox(-5, -5, 3, 3).clip(10, 10) == BoundingBox(0, 0, 3, 3)
    assert BoundingBox(12, 12, 13, 13).clip(10, 10) is None
    assert BoundingBox(0, 0, 2, 1).polyline()[0] == BoundingBox(0, 0, 2, 1).polyline()[-1]
