"""detectron2 weights in our torchvision detector (issue 8): every tensor in its place, the
background class moved, and files read without running anything they hold."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from anaxreport.errors import WeightsError
from anaxreport.model.config import DetectorConfig
from anaxreport.model.detector import build_detector, extract_regions
from anaxreport.model.detectron2 import from_detectron2, read_detectron2, to_detectron2
from anaxreport.model.preprocess import to_model_input
from anaxreport.reporter import Reporter

K = 18
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "pa_cardiomegaly_edema.dcm"


def _detector(backbone: str = "resnet50", size: int = 128, channels: int = 32, **conventions):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = DetectorConfig(backbone=backbone, norm="frozen_batch", image_size=size,
                                fpn_channels=channels, score_threshold=0.0,
                                **conventions)  # fmt: skip
        return build_detector(config, K).eval(), config


def _detectron2_names(blocks: tuple[int, ...]) -> set[str]:
    """The tensor names of detectron2's R-FPN Faster R-CNN (bottleneck blocks), written from
    its naming scheme: ResNet stages res2..res5, FPN levels 2..5, the standard RPN and box
    heads, each norm a FrozenBatchNorm."""
    norm = ("weight", "bias", "running_mean", "running_var")
    names = {"backbone.bottom_up.stem.conv1.weight"}
    names |= {f"backbone.bottom_up.stem.conv1.norm.{n}" for n in norm}
    for stage, count in zip(range(2, 6), blocks, strict=True):
        for block in range(count):
            prefix = f"backbone.bottom_up.res{stage}.{block}"
            convs = ["conv1", "conv2", "conv3"] + (["shortcut"] if block == 0 else [])
            for conv in convs:
                names |= {f"{prefix}.{conv}.weight"} | {f"{prefix}.{conv}.norm.{n}" for n in norm}
        names |= {f"backbone.fpn_{kind}{stage}.{p}" for kind in ("lateral", "output")
                  for p in ("weight", "bias")}  # fmt: skip
    for layer in ("conv", "objectness_logits", "anchor_deltas"):
        names |= {f"proposal_generator.rpn_head.{layer}.{p}" for p in ("weight", "bias")}
    for layer in ("box_head.fc1", "box_head.fc2", "box_predictor.cls_score",
                  "box_predictor.bbox_pred"):  # fmt: skip
        names |= {f"roi_heads.{layer}.{p}" for p in ("weight", "bias")}
    return names


def test_our_detector_in_detectron2_names_is_detectron2s_model():
    detector, _ = _detector()
    ours = to_detectron2(detector.state_dict())
    assert set(ours) == _detectron2_names((3, 4, 6, 3))
    assert ours["roi_heads.box_predictor.cls_score.weight"].shape == (K + 1, 1024)
    assert ours["roi_heads.box_predictor.bbox_pred.weight"].shape == (4 * K, 1024)


def test_every_detectron2_tensor_lands_where_it_should():
    detector, _ = _detector()
    shapes = {name: tensor.shape for name, tensor in to_detectron2(detector.state_dict()).items()}
    # every tensor its own values: the i-th tensor is i + arange
    d2 = {name: np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + i * 1e6
          for i, (name, shape) in enumerate(sorted(shapes.items()))}  # fmt: skip
    converted = from_detectron2(d2)
    places = {
        "backbone.bottom_up.stem.conv1.weight": "backbone.body.conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.running_var": "backbone.body.bn1.running_var",
        "backbone.bottom_up.res2.0.conv3.weight": "backbone.body.layer1.0.conv3.weight",
        "backbone.bottom_up.res3.0.shortcut.norm.running_var":
            "backbone.body.layer2.0.downsample.1.running_var",
        "backbone.bottom_up.res4.5.conv2.norm.bias": "backbone.body.layer3.5.bn2.bias",
        "backbone.bottom_up.res5.2.conv1.weight": "backbone.body.layer4.2.conv1.weight",
        "backbone.fpn_lateral5.weight": "backbone.fpn.inner_blocks.3.0.weight",
        "backbone.fpn_output2.bias": "backbone.fpn.layer_blocks.0.0.bias",
        "proposal_generator.rpn_head.conv.weight": "rpn.head.conv.0.0.weight",
        "proposal_generator.rpn_head.objectness_logits.bias": "rpn.head.cls_logits.bias",
        "proposal_generator.rpn_head.anchor_deltas.weight": "rpn.head.bbox_pred.weight",
        "roi_heads.box_head.fc1.weight": "roi_heads.box_head.fc6.weight",
        "roi_heads.box_head.fc2.bias": "roi_heads.box_head.fc7.bias",
    }  # fmt: skip
    for theirs, ours in places.items():
        assert torch.equal(converted[ours], torch.from_numpy(d2[theirs])), theirs
    for part in ("weight", "bias"):  # background: detectron2's last row, torchvision's first
        scores = d2[f"roi_heads.box_predictor.cls_score.{part}"]
        ours = converted[f"roi_heads.box_predictor.cls_score.{part}"].numpy()
        np.testing.assert_array_equal(ours[0], scores[K])
        np.testing.assert_array_equal(ours[1:], scores[:K])
        deltas = d2[f"roi_heads.box_predictor.bbox_pred.{part}"]
        ours = converted[f"roi_heads.box_predictor.bbox_pred.{part}"].numpy()
        assert not ours[:4].any()  # the background's regression, never decoded
        np.testing.assert_array_equal(ours[4:], deltas)
    fresh, _ = _detector()
    fresh.load_state_dict(converted, strict=True)  # nothing missing, nothing left over


def test_a_converted_detector_computes_what_the_original_did():
    detector, config = _detector("resnet18", size=96, channels=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # different weights before the conversion's
        fresh = build_detector(config, K).eval()
    fresh.load_state_dict(from_detectron2(to_detectron2(detector.state_dict())), strict=True)
    image, _ = to_model_input(Reporter.from_pretrained().read(SAMPLE).pixels, config.image_size)
    images = [image.expand(3, -1, -1)]
    with torch.inference_mode():
        before, after = detector(images)[0], fresh(images)[0]
        regions = [extract_regions(d, images, K, 0.0) for d in (detector, fresh)]
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(before[key], after[key]), key
    for key in ("boxes", "scores", "found", "features"):
        assert torch.equal(getattr(regions[0], key), getattr(regions[1], key)), key


def test_class_agnostic_regression_serves_every_class():
    detector, _ = _detector("resnet18", size=96, channels=16)
    d2 = to_detectron2(detector.state_dict())
    shared = d2["roi_heads.box_predictor.bbox_pred.weight"][:4].clone()
    d2["roi_heads.box_predictor.bbox_pred.weight"] = shared
    d2["roi_heads.box_predictor.bbox_pred.bias"] = d2["roi_heads.box_predictor.bbox_pred.bias"][:4]
    ours = from_detectron2(d2)["roi_heads.box_predictor.bbox_pred.weight"]
    assert ours.shape == (4 * (K + 1), 1024)
    for k in range(1, K + 1):
        assert torch.equal(ours[4 * k : 4 * k + 4], shared)


def test_other_models_are_refused_by_name():
    detector, _ = _detector("resnet18", size=96, channels=16)
    d2 = to_detectron2(detector.state_dict())
    d2["roi_heads.mask_head.predictor.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"1 unknown tensors \(roi_heads\.mask_head"):
        from_detectron2(d2)
    with pytest.raises(WeightsError, match=r"not our Faster R-CNN's tensor: head\.x"):
        to_detectron2({"head.x": torch.zeros(1)})


def test_checkpoint_files_are_read_without_running_them(tmp_path):
    detector, _ = _detector("resnet18", size=96, channels=16)
    d2 = to_detectron2(detector.state_dict())
    pth = tmp_path / "model_final.pth"
    torch.save({"model": d2, "iteration": 90000}, pth)  # detectron2's checkpointer's layout
    assert set(read_detectron2(pth)) == set(d2)
    pkl = tmp_path / "model_final.pkl"  # detectron2's own pickles: numpy arrays
    arrays = {name: tensor.numpy() for name, tensor in d2.items()}
    pkl.write_bytes(pickle.dumps({"model": arrays, "__author__": "test"}, protocol=2))
    read = read_detectron2(pkl)
    assert all(np.array_equal(read[name], arrays[name]) for name in arrays)

    flag = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {flag}",))

    for suffix in (".pkl", ".pth"):
        evil = tmp_path / f"evil{suffix}"
        if suffix == ".pkl":
            evil.write_bytes(pickle.dumps({"model": {"x": Payload()}}))
        else:
            torch.save({"model": {"x": Payload()}}, evil)
        with pytest.raises(WeightsError, match=r"refused|safely"):
            read_detectron2(evil)
    assert not flag.exists()  # nothing the files held ran
    with pytest.raises(WeightsError, match=r"\.pth, \.pkl or \.safetensors"):
        (tmp_path / "model.bin").write_bytes(b"x")
        read_detectron2(tmp_path / "model.bin")


def test_training_starts_from_a_detectron2_detector(tmp_path, capsys):
    """``train --init-detector model_final.pth --detector-epochs 0``: the heads train on the
    features of detectron2's weights, which the checkpoint then carries."""
    from anaxreport.cli import main
    from anaxreport.data.phantom import generate_phantoms
    from anaxreport.model.checkpoint import load_checkpoint, sha256

    conventions = {"anchor_base": 8, "round_anchors": False, "aspect_ratios": (0.5, 1.0, 2.0),
                   "roi_align": "detectron2", "pixel_mean": (0.406, 0.456, 0.485),
                   "pixel_std": (0.225, 0.224, 0.229)}  # fmt: skip
    detector, _ = _detector("resnet18", size=96, channels=16, **conventions)
    weights = tmp_path / "model_final.pth"
    torch.save({"model": to_detectron2(detector.state_dict()), "iteration": 1}, weights)
    generate_phantoms(tmp_path / "data", 10, seed=7)
    argv = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "m.json"),
            "--backbone", "resnet18", "--fpn-channels", "16", "--image-size", "96",
            "--init-detector", str(weights), "--detector-epochs", "0", "--head-epochs", "1",
            "--rpn-proposals", "50", "--batch-size", "2", "--anchor-base", "8",
            "--unrounded-anchors", "--aspect-ratios", "0.5", "1", "2",
            "--roi-align", "detectron2", "--pixel-mean", "0.406", "0.456", "0.485",
            "--pixel-std", "0.225", "0.224", "0.229"]  # fmt: skip
    assert main(argv) == 0
    model, info = load_checkpoint(tmp_path / "m.json")
    detector_config = info.config.detector
    assert {key: getattr(detector_config, key) for key in conventions} == conventions
    ours, theirs = model.detector.state_dict(), detector.state_dict()
    half = {name: theirs[name].half().float() for name in theirs}  # checkpoints store float16
    assert all(torch.equal(ours[n], half[n]) for n in theirs if "bbox_pred" not in n)
    assert info.provenance["detector_init"] == {"file": str(weights), "sha256": sha256(weights)}
    assert info.metrics["validation_detector_iou"] >= 0  # the starting detector, scored

    argv[argv.index("--fpn-channels") + 1] = "32"  # weights for another detector
    assert main(argv) == WeightsError("").exit_code
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "do not fit the detector" in error[0]


def test_stride_in_1x1_reaches_the_trained_detector(tmp_path, capsys):
    """``--stride-in-1x1`` is the detector config's switch (a basic-block ResNet refuses it,
    before any data is read)."""
    from anaxreport.cli import main
    from anaxreport.errors import ConfigurationError

    argv = ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m.json"),
            "--backbone", "resnet18", "--stride-in-1x1"]  # fmt: skip
    assert main(argv) == ConfigurationError("").exit_code
    assert "stride_in_1x1 is for bottleneck ResNets" in capsys.readouterr().err
    argv[-1:] = ["--pixel-mean", "0.4", "0.5"]  # neither one value nor three
    assert main(argv) == ConfigurationError("").exit_code
    assert "one value or one per channel" in capsys.readouterr().err
