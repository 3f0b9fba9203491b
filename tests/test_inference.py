"""The inference model computes what the plain, trained model does (issue 7, item 3).

Plain: the checkpoint as trained, torchvision's Faster R-CNN (BatchNorm layers separate) with
its full post-processing (per-class NMS, top 100 detections) before the best box of each class
is taken. Optimised: what :class:`~anaxreport.Reporter` runs — :class:`InferenceModel`, our
own parts over the same state dict, BatchNorm folded, the best box per class taken straight
from the box predictor, RoIAlign as one embedding_bag, NMS over the best prefix, torchvision's
Python never imported; and what the CLI runs by default, the ONNX Runtime engine
(:class:`~anaxreport.model.engine.OnnxModel`), which never imports torch at all.

Tolerances: the same regions found; boxes within 0.01 px of the model grid; detection scores
and finding probabilities within 1e-4 (float32 rounding of the folded weights).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _models import inference_model

from anaxreport.errors import ConfigurationError, WeightsError
from anaxreport.ingest import read_radiograph
from anaxreport.model.anaxnet import AnaXNet
from anaxreport.model.checkpoint import load_checkpoint
from anaxreport.model.config import DetectorConfig, ModelConfig
from anaxreport.model.detector import extract_regions
from anaxreport.model.inference import InferenceModel, roi_align
from anaxreport.model.preprocess import to_model_input
from anaxreport.reporter import Reporter
from anaxreport.resources import DEFAULT_CHECKPOINT, models_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "samples").glob("*.dcm"))


RUNTIMES = ("torch", "onnxruntime")


@pytest.fixture(scope="module")
def models():
    """The plain model, the inference model on each runtime, and the checkpoint's info."""
    model, info = load_checkpoint(models_dir() / DEFAULT_CHECKPOINT)
    fast = {runtime: inference_model(model, runtime) for runtime in RUNTIMES}
    return model.eval(), fast, info


def _plain(model: AnaXNet, images: list[torch.Tensor], selection: str = "torchvision"):
    config = model.config
    regions = extract_regions(model.detector, images, len(config.regions),
                              config.detector.score_threshold, selection=selection)  # fmt: skip
    return regions, torch.sigmoid(model.head(regions.features).logits)


def _assert_same(fast, reference, probabilities) -> None:
    assert torch.equal(fast.found, reference.found)
    torch.testing.assert_close(fast.boxes, reference.boxes, atol=0.01, rtol=0)
    torch.testing.assert_close(fast.scores, reference.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast.probabilities, probabilities, atol=1e-4, rtol=0)


def _image(sample: Path, size: int) -> torch.Tensor:
    return to_model_input(read_radiograph(sample).pixels, size)[0]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_inference_model_gives_the_plain_boxes_and_probabilities(models, sample, runtime):
    plain_model, fast_models, info = models
    fast_model = fast_models[runtime]
    image = _image(sample, info.config.detector.image_size)
    with torch.inference_mode():
        reference, probabilities = _plain(plain_model, [image])
        fast = fast_model([image])
    assert reference.found.sum() >= 15  # a real comparison: most regions are found
    _assert_same(fast, reference, probabilities)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_padded_batch_and_a_resized_input_match_too(models, runtime):
    """Two images of different shapes share one padded tensor, and one is not at the model's
    size, so the transform's resize, the padding and the per-image loops are all exercised."""
    plain_model, fast_models, info = models
    fast_model = fast_models[runtime]
    size = info.config.detector.image_size
    images = [_image(SAMPLES[0], size), _image(SAMPLES[3], size - 56)]
    assert images[0].shape != images[1].shape
    with torch.inference_mode():
        reference, probabilities = _plain(plain_model, images)
        fast = fast_model(images)
    assert reference.found.sum() >= 30
    _assert_same(fast, reference, probabilities)


#: detectron2's conventions the detector reproduces (STRIDE_IN_1X1, anchors 32..512 unrounded,
#: its three aspect ratios, ROIAlignV2, per-channel input normalisation)
DETECTRON2_LIKE = {"stride_in_1x1": True, "round_anchors": False, "anchor_base": 32,
                   "aspect_ratios": (0.5, 1.0, 2.0), "roi_align": "detectron2",
                   "pixel_mean": (0.406, 0.456, 0.485),
                   "pixel_std": (0.225, 0.224, 0.229)}  # fmt: skip


def _random_model(backbone: str, norm: str, **detector: object) -> AnaXNet:
    """A random AnaXNet whose norms have non-trivial statistics, so that folding is tested."""
    config = ModelConfig(detector=DetectorConfig(backbone=backbone, norm=norm, fpn_channels=32,
                                                 image_size=128, score_threshold=0.0,
                                                 **detector))  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = AnaXNet(config)
        for module in model.modules():
            if hasattr(module, "running_var"):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.mark.parametrize(
    ("backbone", "norm", "runtime", "detector"),
    [
        ("resnet18", "frozen_batch", "torch", {}),
        ("resnet50", "batch", "onnxruntime", {}),  # bottleneck blocks in the ONNX graph
        ("resnet50", "group", "auto", {}),  # GroupNorm does not fold: auto takes torch
        ("resnet50", "frozen_batch", "onnxruntime", DETECTRON2_LIKE),
        ("resnet50", "frozen_batch", "torch", DETECTRON2_LIKE),
    ],
)
def test_other_backbones_and_norms_match(backbone, norm, runtime, detector):
    """Random weights score every class about alike, so torchvision's cut to the 100 best
    detections drops whole classes (the one documented difference of the direct selection,
    see best_per_class_direct); the reference here is the plain model with that selection."""
    model = _random_model(backbone, norm, **detector)
    fast = inference_model(model, runtime)
    assert fast.runtime == ("torch" if norm == "group" else runtime)
    image = _image(SAMPLES[1], 128)
    with torch.inference_mode():
        reference, probabilities = _plain(model, [image], selection="direct")
        out = fast([image])
    assert reference.found.sum() >= 10
    _assert_same(out, reference, probabilities)


@pytest.mark.parametrize("kind", ["torchvision", "detectron2"])
def test_roi_align_is_torchvisions_multiscale_roi_align(kind):
    """Two images of different sizes in a padded batch; boxes of every size, on the edges,
    partly and wholly outside the image, thinner than a pixel: the FPN level chosen, the
    bilinear weights and the border rules are torchvision's, to float32 rounding; with
    detectron2's ROIAlignV2 too (half-pixel aligned, as many samples a bin as it is wide)."""
    from torchvision.ops import MultiScaleRoIAlign

    from anaxreport.model.detector import AlignedMultiScaleRoIAlign

    generator = torch.Generator().manual_seed(7)
    levels = {str(i): torch.randn(2, 16, 64 >> i, 48 >> i, generator=generator) for i in range(4)}
    sizes = [(256, 192), (230, 170)]
    corners = torch.rand(2, 120, 2, generator=generator) * torch.tensor([240.0, 300.0]) - 30
    extent = torch.rand(2, 120, 2, generator=generator) ** 3 * 260 + 0.2
    boxes = [torch.cat([c, c + e], dim=1) for c, e in zip(corners, extent, strict=True)]
    boxes[0][:3] = torch.tensor([[0.0, 0, 192, 256], [190, 250, 400, 500], [-80, -90, -60, -70]])
    if kind == "torchvision":
        pooler = MultiScaleRoIAlign(list(levels), output_size=7, sampling_ratio=2)
    else:
        pooler = AlignedMultiScaleRoIAlign(list(levels))
    reference = pooler(levels, boxes, sizes)
    channels_last = [x.contiguous(memory_format=torch.channels_last) for x in levels.values()]
    ours = roi_align(channels_last, boxes, sizes, kind).permute(0, 3, 1, 2)
    assert ours.shape == reference.shape == (240, 16, 7, 7)
    assert reference[2].abs().max() == 0  # wholly outside: torchvision's zeros, and ours
    torch.testing.assert_close(ours, reference, atol=2e-6, rtol=1e-5)
    assert roi_align(channels_last, [torch.zeros(0, 4)], sizes[:1], kind).shape == (0, 7, 7, 16)


def test_the_trained_model_is_left_alone(models):
    plain_model, _, _ = models
    before = {name: tensor.clone() for name, tensor in plain_model.state_dict().items()}
    fast = InferenceModel.from_model(plain_model)
    assert fast.backbone.stem.weight.data_ptr() != (
        plain_model.detector.backbone.body.conv1.weight.data_ptr()
    )
    for name, tensor in plain_model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert not any(p.requires_grad for p in fast.parameters())


def test_weights_that_do_not_fit_the_config_are_refused(models):
    plain_model, _, info = models
    state = plain_model.state_dict()
    extra = {**state, "detector.backbone.body.layer5.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match="does not use"):
        InferenceModel(info.config, extra)
    missing = {k: v for k, v in state.items() if k != "detector.rpn.head.cls_logits.bias"}
    with pytest.raises(WeightsError, match=r"rpn\.head\.cls_logits\.bias"):
        InferenceModel(info.config, missing)
    deeper = info.config.replace(
        detector=dataclasses.replace(info.config.detector, backbone="resnet34")
    )
    with pytest.raises(WeightsError, match=r"layer1\.2\."):
        InferenceModel(deeper, state)


def test_reporting_in_torch_never_imports_torchvision_or_the_compiler():
    """torchvision's import pulls in torch._dynamo: seconds of every start. (The default
    engine imports no torch at all: tests/test_engine.py.)"""
    code = (
        "import sys; from anaxreport import Reporter; "
        f"Reporter.from_pretrained(runtime='torch').run({str(SAMPLES[0])!r}); "
        "print(sorted(m for m in sys.modules if m.startswith(('torchvision', 'torch._dynamo'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_runtime_is_chosen_and_checked(models, monkeypatch):
    from anaxreport.errors import ConfigurationError
    from anaxreport.model import runtime

    _, fast_models, _ = models
    assert Reporter.from_pretrained().model.runtime == "onnxruntime"  # installed: auto takes it
    assert runtime.resolve_runtime("auto", foldable=False) == "torch"
    with pytest.raises(ConfigurationError, match="GroupNorm"):
        runtime.resolve_runtime("onnxruntime", foldable=False)
    with pytest.raises(ConfigurationError, match="one of auto, torch, onnxruntime"):
        runtime.resolve_runtime("tensorrt", foldable=True)
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    assert runtime.resolve_runtime("auto", foldable=True) == "torch"
    with pytest.raises(ConfigurationError, match="needs the packages onnx, onnxruntime, scipy"):
        runtime.resolve_runtime("onnxruntime", foldable=True)
    with pytest.raises(TypeError, match="cannot be copied"):
        copy.deepcopy(fast_models["onnxruntime"].engine)
    # the session is built in the background; what building it raised, waiting raises
    broken = runtime.Session(runtime.OnnxGraph(b"not an ONNX model", {}))
    with pytest.raises(Exception, match=r"(?i)protobuf|parse|load"):
        broken.wait()


def test_the_graphs_declare_the_oldest_ir_version_their_opset_needs(models):
    """Not the installed onnx's newest: onnx 1.23 writes IR 14 by default, which onnxruntime
    1.30 refuses to load (seen on a GPU machine with those two)."""
    import onnx

    from anaxreport.model.runtime import OPSET, nms_graph

    engine = models[1]["onnxruntime"].engine
    for graph in (engine._features, engine._box_head, nms_graph(0.7)):
        proto = onnx.load_from_string(graph.model)  # a Session or an OnnxGraph
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
        assert proto.ir_version == onnx.helper.find_min_ir_version_for(proto.opset_import) == 8


@pytest.mark.parametrize(("spread", "prefixes"), [(300.0, [900]), (5.0, [900, 1800]),
                                                  (3.0, [900, 1800, 2400])])  # fmt: skip
def test_nms_over_the_best_prefix_keeps_what_nms_over_all_keeps(models, spread, prefixes):
    """Boxes spread wide (most survive: the first prefix is enough), packed (the prefix
    doubles once) or packed tight (fewer than 300 survive at all: it ends with every box)."""
    rpn = models[1]["torch"].rpn
    generator = torch.Generator().manual_seed(int(spread))
    n = 2400
    corner = torch.rand(n, 2, generator=generator) * spread
    boxes = torch.cat([corner, corner + 8 + torch.rand(n, 2, generator=generator) * 40], 1)
    scores = torch.rand(n, generator=generator)
    level = torch.randint(0, 5, (n,), generator=generator)
    everything = rpn._nms_per_level(boxes, scores, level, 5)[: rpn.post_nms_top_n]
    seen = []
    nms = rpn._nms_per_level
    rpn._nms_per_level = lambda b, *rest: seen.append(len(b)) or nms(b, *rest)
    try:
        assert torch.equal(rpn._best_survivors(boxes, scores, level, 5), everything)
    finally:
        del rpn._nms_per_level
    assert seen == prefixes


def test_stride_in_1x1_moves_the_bottlenecks_stride():
    """detectron2's STRIDE_IN_1X1: the first block of stages 2-4 strides in its 1x1; the same
    weights then compute other features (so the switch is no formality)."""
    strided = _random_model("resnet50", "frozen_batch", stride_in_1x1=True)
    body = strided.detector.backbone.body
    for layer in (body.layer2, body.layer3, body.layer4):
        assert (layer[0].conv1.stride, layer[0].conv2.stride) == ((2, 2), (1, 1))
    assert (body.layer1[0].conv1.stride, body.layer1[0].conv2.stride) == ((1, 1), (1, 1))
    plain = _random_model("resnet50", "frozen_batch")
    plain.load_state_dict(strided.state_dict())
    image = _image(SAMPLES[1], 128)
    with torch.inference_mode():
        a, b = strided.detector.backbone(image[None]), plain.detector.backbone(image[None])
    assert all(x.shape == y.shape for x, y in zip(a.values(), b.values(), strict=True))
    assert not torch.allclose(a["0"], b["0"])
    with pytest.raises(ConfigurationError, match="bottleneck ResNets"):
        DetectorConfig(backbone="resnet18", stride_in_1x1=True)


def test_anchors_are_torchvisions_rounded_or_detectron2s_not():
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from anaxreport.model.detector import UnroundedAnchors
    from anaxreport.model.inference import cell_anchors

    ratios = (0.5, 1.0, 2.0, 4.0)
    for size in (8, 32, 181):
        torchvision = AnchorGenerator(sizes=((size,),), aspect_ratios=(ratios,)).cell_anchors[0]
        assert torch.equal(cell_anchors((size,), ratios), torchvision)
        # detectron2's DefaultAnchorGenerator: area size², w = sqrt(area / r), h = r w, centred
        w = torch.tensor([math.sqrt(size**2 / r) for r in ratios])
        h = torch.tensor(ratios) * w
        detectron2 = torch.stack([-w / 2, -h / 2, w / 2, h / 2], dim=1)
        torch.testing.assert_close(cell_anchors((size,), ratios, rounded=False), detectron2)
        trained = UnroundedAnchors(sizes=((size,),), aspect_ratios=(ratios,)).cell_anchors[0]
        torch.testing.assert_close(trained, detectron2)
    config = DetectorConfig(image_size=800, anchor_base=32)
    assert config.anchor_sizes == ((32,), (64,), (128,), (256,), (512,))
