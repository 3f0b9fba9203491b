"""The optimised inference path computes what the plain one does (issue 7, item 3).

Plain: the checkpoint as trained (BatchNorm layers separate) with torchvision's full
post-processing (per-class NMS, top 100 detections) before the best box of each class is
taken. Optimised: what :class:`~anaxreport.Reporter` runs — BatchNorm folded into the
convolutions and the best box per class taken straight from the box predictor.

Tolerances: the same regions found; boxes within 0.01 px of the model grid; detection scores
and finding probabilities within 1e-4 (float32 rounding of the folded weights).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from anaxreport.ingest import read_radiograph
from anaxreport.model.checkpoint import load_checkpoint
from anaxreport.model.detector import extract_regions
from anaxreport.model.inference import fold_batch_norms, prepare_for_inference
from anaxreport.model.preprocess import to_model_input
from anaxreport.resources import DEFAULT_CHECKPOINT, models_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "samples").glob("*.dcm"))


@pytest.fixture(scope="module")
def models():
    model, info = load_checkpoint(models_dir() / DEFAULT_CHECKPOINT)
    return model.eval(), prepare_for_inference(model), info


def _plain(model, image):
    config = model.config
    regions = extract_regions(model.detector, [image], len(config.regions),
                              config.detector.score_threshold, selection="torchvision")  # fmt: skip
    return regions, torch.sigmoid(model.head(regions.features).logits)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_optimised_path_gives_the_plain_boxes_and_probabilities(models, sample):
    plain_model, fast_model, info = models
    image, _ = to_model_input(read_radiograph(sample).pixels, info.config.detector.image_size)
    with torch.inference_mode():
        reference, probabilities = _plain(plain_model, image)
        fast = fast_model([image])
    assert torch.equal(fast.found, reference.found)
    assert reference.found.sum() >= 15  # a real comparison: most regions are found
    torch.testing.assert_close(fast.boxes, reference.boxes, atol=0.01, rtol=0)
    torch.testing.assert_close(fast.scores, reference.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast.probabilities, probabilities, atol=1e-4, rtol=0)


def test_every_batch_norm_of_the_backbone_is_folded(models):
    plain_model, fast_model, _ = models

    def norms(model):
        kinds = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)
        return [m for m in model.detector.backbone.modules() if isinstance(m, kinds)]

    assert norms(fast_model) == []
    assert len(norms(plain_model)) == 20  # ResNet-18: stem, 2 per block × 8, 3 downsample paths
    assert fold_batch_norms(torch.nn.Sequential()) == 0


def test_preparing_leaves_the_trained_model_alone(models):
    plain_model, fast_model, _ = models
    assert plain_model.detector.backbone.body.bn1.__class__.__name__ == "BatchNorm2d"
    assert fast_model.detector.backbone.body.conv1.weight.data_ptr() != (
        plain_model.detector.backbone.body.conv1.weight.data_ptr()
    )
