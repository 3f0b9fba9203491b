"""The ONNX Runtime engine, part by part, against the torch inference model it mirrors.

End to end, ``tests/test_inference.py`` holds both engines to the plain trained model on every
sample. Here: the parts that are the engine's own (NumPy preprocessing, RoIAlign as a sparse
product, NMS on ONNX Runtime, the heads in NumPy with their explanations), and the reason it
exists: reporting from the command line never imports torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from anaxreport.ingest import read_radiograph
from anaxreport.model.checkpoint import read_arrays, read_weights
from anaxreport.model.engine import OnnxModel, PoolingTable
from anaxreport.model.inference import InferenceModel, roi_align
from anaxreport.model.preprocess import model_input, resample
from anaxreport.resources import DEFAULT_CHECKPOINT, models_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "samples").glob("*.dcm"))


@pytest.fixture(scope="module")
def engines():
    state, info = read_weights(models_dir() / DEFAULT_CHECKPOINT)
    arrays, _ = read_arrays(models_dir() / DEFAULT_CHECKPOINT)
    return InferenceModel(info.config, state), OnnxModel(info.config, arrays), info


def test_reporting_from_the_command_line_never_imports_torch(tmp_path):
    """The reason for the engine: importing torch costs seconds of every CLI start."""
    code = (
        "import sys; from anaxreport.cli import main; "
        f"status = main([{str(SAMPLES[0])!r}, '--format', 'all', '-o', {str(tmp_path)!r}]); "
        "print(status, sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []"
    written = {path.suffix for path in tmp_path.iterdir()}
    assert {".txt", ".json", ".dcm"} <= written


@pytest.mark.parametrize("shape", [(441, 446), (539, 464), (100, 120), (257, 1200), (256, 200)])
def test_model_input_is_torchs_antialiased_resize(shape):
    pixels = np.random.default_rng(shape[0]).random(shape).astype(np.float32)
    ours, resize = model_input(pixels, 256)
    source = torch.from_numpy(pixels)[None, None]
    theirs = F.interpolate(source, size=resize.model_size, mode="bilinear", antialias=True,
                           align_corners=False)[0, 0].clamp(0, 1)  # fmt: skip
    assert ours.dtype == np.float32 and max(ours.shape) == 256
    np.testing.assert_allclose(ours, theirs.numpy(), atol=2e-5, rtol=0)


def test_plain_bilinear_resampling_is_torchs():
    image = np.random.default_rng(3).random((3, 200, 180)).astype(np.float32)
    theirs = F.interpolate(torch.from_numpy(image)[None], scale_factor=1.28, mode="bilinear",
                           recompute_scale_factor=True, align_corners=False)[0]  # fmt: skip
    ours = resample(image, tuple(theirs.shape[-2:]), antialias=False)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=2e-5, rtol=0)


@pytest.mark.parametrize("kind", ["torchvision", "detectron2"])
def test_pooling_as_a_sparse_product_is_the_torch_models_roi_align(kind):
    """Boxes of every size, on the edges, outside, thinner than a pixel, two padded images."""
    rng = np.random.default_rng(11)
    levels = [rng.standard_normal((2, 64 >> i, 48 >> i, 16)).astype(np.float32) for i in range(4)]
    sizes = [(256, 192), (230, 170)]
    corners = rng.random((2, 90, 2)) * [240.0, 300.0] - 30
    extent = rng.random((2, 90, 2)) ** 3 * 260 + 0.2
    boxes = [
        np.concatenate([c, c + e], 1).astype(np.float32)
        for c, e in zip(corners, extent, strict=True)
    ]
    boxes[0][:2] = [[0.0, 0, 192, 256], [-80, -90, -60, -70]]
    ours = PoolingTable(levels, sizes, kind).pool(boxes).reshape(180, 7, 7, 16)
    planar = [torch.from_numpy(x).permute(0, 3, 1, 2) for x in levels]
    theirs = roi_align(planar, [torch.from_numpy(b) for b in boxes], sizes, kind)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=2e-6, rtol=1e-5)
    with ThreadPoolExecutor(1) as helper:  # in two halves, the second image's boxes split
        halves = PoolingTable(levels, sizes, kind).pool(boxes, helper).reshape(180, 7, 7, 16)
    np.testing.assert_array_equal(halves, ours)
    assert np.abs(ours[1]).max() == 0  # wholly outside the image
    assert PoolingTable(levels, sizes[:1], kind).pool([np.zeros((0, 4))]).shape == (0, 784)


@pytest.mark.parametrize("spread", [300.0, 5.0])
def test_nms_per_level_keeps_what_torchvisions_keeps(engines, spread):
    rpn, engine = engines[0].rpn, engines[1]
    generator = torch.Generator().manual_seed(int(spread))
    n = 1500
    corner = torch.rand(n, 2, generator=generator) * spread
    boxes = torch.cat([corner, corner + 8 + torch.rand(n, 2, generator=generator) * 40], 1)
    scores, level = torch.rand(n, generator=generator), torch.randint(0, 5, (n,))
    theirs = rpn._nms_per_level(boxes, scores, level, 5)
    ours = engine._nms_per_level(boxes.numpy(), scores.numpy(), level.numpy(), 5)
    assert 100 < len(ours) < n
    np.testing.assert_array_equal(ours, theirs.numpy())


def test_explanations_and_attention_are_the_torch_models(engines):
    model, engine, info = engines
    image, _ = model_input(read_radiograph(SAMPLES[3]).pixels, info.config.detector.image_size)
    with torch.inference_mode():
        theirs = model([torch.from_numpy(image).expand(3, -1, -1)], explain=True)
    ours = engine([image], explain=True)
    for name in ("attention", "contributions", "logits"):
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name).numpy(),
                                   atol=2e-5, rtol=0, err_msg=name)  # fmt: skip
    # the shares add up to each logit less the classifier's bias
    total = ours.contributions.sum(axis=2) + engine.head.bias
    np.testing.assert_allclose(total, ours.logits, atol=1e-4, rtol=0)


def test_a_pass_gives_the_same_bits_from_any_thread(engines):
    """The node's workers and the main thread report the same probabilities and explanations,
    to the bit: the head runs on ONNX Runtime and the explanation's products in NumPy's own
    loops, neither of which depends on the calling thread (NumPy's BLAS products did, through
    its thread limits: they once differed by a rounding)."""
    engine, info = engines[1], engines[2]
    image, _ = model_input(read_radiograph(SAMPLES[0]).pixels, info.config.detector.image_size)
    here = engine([image], explain=True)
    with ThreadPoolExecutor(max_workers=2) as pool:  # overlapping passes, as a node's workers
        there = list(pool.map(lambda _: engine([image], explain=True), range(4)))
    for out in there:
        for name in ("boxes", "scores", "logits", "attention", "contributions"):
            np.testing.assert_array_equal(getattr(out, name), getattr(here, name), err_msg=name)


def test_the_bench_reports_the_engines_stages(engines):
    """The stage clock sees every boundary, in order."""
    engine, stages = engines[1], []
    engine.clock = stages.append
    try:
        engine([np.zeros((256, 200), dtype=np.float32)])
    finally:
        engine.clock = None
    assert stages == ["start", "backbone", "rpn", "regions", "head"]
    assert json.dumps(stages)  # plain names, as the bench's JSON keeps them


def test_weights_that_do_not_fit_the_config_are_refused_by_the_engine_too(engines):
    from anaxreport.errors import WeightsError

    info = engines[2]
    arrays, _ = read_arrays(models_dir() / DEFAULT_CHECKPOINT)
    extra = {**arrays, "detector.backbone.body.layer5.0.conv1.weight": np.zeros(1, np.float32)}
    with pytest.raises(WeightsError, match="does not use"):
        OnnxModel(info.config, extra)
    missing = {k: v for k, v in arrays.items() if k != "head.classifier.bias"}
    with pytest.raises(WeightsError, match=r"head\.classifier\.bias"):
        OnnxModel(info.config, missing)
