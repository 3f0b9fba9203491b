"""The paper's baselines (Faster R-CNN + FC, CheXGCN) as heads of the same model (issue 8).

Checked against their definitions (ML-GCN's graph, eqs. 7-8, and classifier generator), through
the product's inference path, and trained and evaluated end to end by the same commands as
AnaXNet.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from _models import inference_model
from PIL import Image
from torch.nn import functional as F

from anaxreport.cli import main
from anaxreport.compare import PAPER_TABLE_3
from anaxreport.errors import ConfigurationError, WeightsError
from anaxreport.evaluate import evaluate_image_level
from anaxreport.model.anaxnet import AnaXNet
from anaxreport.model.baselines import CheXGCNHead, FCHead, build_head
from anaxreport.model.checkpoint import load_checkpoint, read_checkpoint_info
from anaxreport.model.config import DetectorConfig, HeadConfig, ModelConfig
from anaxreport.model.detector import extract_regions
from anaxreport.model.globalview import GlobalView, class_activation_maps, image_labels
from anaxreport.model.graph import label_adjacency
from anaxreport.model.head import AnaXNetHead
from anaxreport.model.inference import InferenceModel
from anaxreport.model.preprocess import to_model_input
from anaxreport.reporter import Reporter

K, M, D = 18, 9, 1024
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "pa_effusion_right.dcm"


def _label_graph(m: int = M) -> tuple[tuple[float, ...], ...]:
    rng = np.random.default_rng(0)
    graph = label_adjacency(rng.random((20, K, m)) < 0.3)
    return tuple(tuple(float(v) for v in row) for row in graph)


def _config(kind: str, **changes) -> ModelConfig:
    graph = _label_graph() if kind == "chexgcn" else ()
    return ModelConfig(head=HeadConfig(kind=kind), label_adjacency=graph, **changes)


def test_the_findings_graph_is_ml_gcns_conditional_probabilities_thresholded_and_reweighted():
    # two images x two regions = four region samples of three findings (and one never seen)
    samples = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0]], dtype=bool)
    # P(1|0) = 2/3, P(2|0) = 1/3; P(0|1) = 1, P(2|1) = 1/2; P(0|2) = P(1|2) = 1/2
    graph = label_adjacency(samples.reshape(2, 2, 4), tau=0.4, reweight=0.2)
    expected = [[0.8, 0.2, 0.0, 0.0],
                [0.1, 0.8, 0.1, 0.0],
                [0.1, 0.1, 0.8, 0.0],
                [0.0, 0.0, 0.0, 1.0]]  # fmt: skip
    np.testing.assert_allclose(graph, expected)
    # a stricter threshold drops 0 -> 1 (2/3) as well as the halves: 1 keeps only 0
    strict = label_adjacency(samples.reshape(2, 2, 4), tau=0.7, reweight=0.2)
    np.testing.assert_allclose(strict[0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(strict[1], [0.2, 0.8, 0.0, 0.0])


def test_the_fc_head_is_one_shared_linear_layer_without_attention():
    head = build_head(_config("fc")).eval()
    assert isinstance(head, FCHead)
    regions = torch.rand(2, K, D)
    out = head(regions)
    assert out.attention is None
    expected = regions @ head.classifier.weight.T + head.classifier.bias
    torch.testing.assert_close(out.logits, expected)


def test_chexgcn_turns_the_findings_graph_into_the_region_classifiers():
    config = _config("chexgcn")
    head = build_head(config).eval()
    assert isinstance(head, CheXGCNHead)
    a = torch.tensor(config.label_adjacency)
    d = a.sum(1).pow(-0.5)
    normalised = d[:, None] * a * d[None, :]
    first, second = (layer.weight for layer in head.layers)
    hidden = F.leaky_relu(normalised @ (torch.eye(M) @ first.T), 0.2)
    classifiers = normalised @ (hidden @ second.T)  # [M, D]: one classifier per finding
    regions = torch.rand(3, K, D)
    out = head(regions)
    assert out.attention is None and out.logits.shape == (3, K, M)
    torch.testing.assert_close(out.logits, regions @ classifiers.T, rtol=1e-4, atol=1e-5)
    # each region is scored alone: nothing crosses regions or batch mates
    torch.testing.assert_close(head(regions[:1, :1]).logits, out.logits[:1, :1])


def test_the_head_kind_and_its_graph_are_checked_and_kept_in_the_json():
    assert isinstance(build_head(ModelConfig()), AnaXNetHead)
    with pytest.raises(ConfigurationError, match="head kind"):
        HeadConfig(kind="densenet")
    with pytest.raises(ConfigurationError, match="which training builds"):
        build_head(ModelConfig(head=HeadConfig(kind="chexgcn")))  # before training built it
    with pytest.raises(ConfigurationError, match="9x9 weights"):
        ModelConfig(head=HeadConfig(kind="chexgcn"), label_adjacency=((1.0,),))
    with pytest.raises(ConfigurationError, match="chexgcn head alone"):
        ModelConfig(label_adjacency=_label_graph())
    config = _config("chexgcn")
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    # a checkpoint written before the baselines (no kind, no label graph) is AnaXNet's
    old = config.to_dict()
    del old["label_adjacency"], old["head"]["kind"], old["head"]["label_tau"]
    assert ModelConfig.from_dict(old).head.kind == "anaxnet"


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("kind", ["fc", "chexgcn"])
def test_a_baseline_runs_through_the_products_inference_model(kind, runtime):
    config = _config(kind, detector=DetectorConfig(backbone="resnet18", fpn_channels=16,
                                                   image_size=96, score_threshold=0.0))  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AnaXNet(config).eval()
    fast = inference_model(model, runtime)
    image, _ = to_model_input(Reporter.from_pretrained().read(SAMPLE).pixels, 96)
    with torch.inference_mode():
        plain, ours = model([image]), fast([image], explain=True)
    assert plain.attention is None and ours.attention is None
    assert torch.equal(plain.found, ours.found)
    torch.testing.assert_close(ours.probabilities, plain.probabilities, atol=1e-4, rtol=0)
    with torch.inference_mode():  # each region's logits, less the bias, from its own feature
        regions = extract_regions(model.detector, [image], 18, 0.0)
        shares = model.head.contributions(regions.features, None)
    torch.testing.assert_close(ours.contributions, shares, atol=1e-4, rtol=0)


def test_globalview_scores_whole_images_and_is_evaluated_image_level():
    config = ModelConfig(head=HeadConfig(kind="globalview"), detector=DetectorConfig(image_size=64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GlobalView(config).eval()
    tall, wide = torch.rand(1, 64, 40), torch.rand(1, 30, 64)
    batch = model.batch([tall, wide])
    assert batch.shape == (2, 3, 64, 64)
    mean, std = config.detector.pixel_mean, config.detector.pixel_std
    torch.testing.assert_close(batch[1, :, :30, :], (wide.expand(3, -1, -1) - mean) / std)
    assert not batch[1, :, 30:].any() and not batch[0, :, :, 40:].any()  # padded with the mean
    with torch.inference_mode():
        assert model([tall, wide]).shape == (2, M)
    with pytest.raises(ConfigurationError, match="no regions to report on"):
        build_head(config)

    labels = np.zeros((4, K, M), dtype=bool)
    labels[0, 3, 1] = labels[1, 7, 1] = True  # pleural effusion in two images, other regions
    np.testing.assert_array_equal(image_labels(labels)[:, 1], [True, True, False, False])
    probabilities = np.zeros((4, M))
    probabilities[:, 1] = [0.9, 0.8, 0.1, 0.85]
    evaluation = evaluate_image_level(image_labels(labels), probabilities)
    assert evaluation.finding_auc[1] == pytest.approx(0.75)  # 3 of 4 pairs ranked right
    assert not evaluation.localising and np.isnan(evaluation.auc).all()
    assert evaluation.to_dict()["localising"] is False
    assert "does not localise" in evaluation.table()


TOY = ["--backbone", "resnet18", "--fpn-channels", "16", "--image-size", "96",
       "--detector-epochs", "1", "--head-epochs", "2", "--roi-samples", "32",
       "--rpn-proposals", "50", "--batch-size", "2",
       "--training-data", "toy phantoms seed 7"]  # fmt: skip


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from anaxreport.data.phantom import generate_phantoms

    data = tmp_path_factory.mktemp("phantoms") / "data"
    generate_phantoms(data, 10, seed=7)
    return data


@pytest.fixture(scope="module")
def compared(phantoms, tmp_path_factory):
    """``anaxreport compare`` on toy phantoms: the four checkpoints, its table and JSON."""
    out = tmp_path_factory.mktemp("compare")
    argv = ["compare", "--data", str(phantoms), "--out-dir", str(out / "models"),
            "--json", str(out / "table.json"), *TOY]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return out, printed.getvalue(), json.loads((out / "table.json").read_text())


def test_compare_prints_table_3_with_the_papers_numbers(compared):
    _, printed, table = compared
    lines = printed.splitlines()
    names = ["Faster R-CNN + FC", "GlobalView*", "CheXGCN", "AnaXNet"]
    rows = [next(i for i, line in enumerate(lines) if line.startswith(name)) for name in names]
    assert rows == sorted(rows)  # the paper's order
    for row, kind in zip(rows, ["fc", "globalview", "chexgcn", "anaxnet"], strict=True):
        cells = lines[row].split()[-10:]
        assert len(cells) == 10  # 9 findings and AVG
        paper = lines[row + 1].split()
        assert paper[0] == "paper" and paper[1:] == [f"{v:.2f}" for v in PAPER_TABLE_3[kind]]
        ours = table["methods"][kind]["auc"]
        assert [f"{v:.2f}" if v is not None else "n/a" for v in ours.values()] == cells
    assert table["methods"]["globalview"]["localising"] is False
    assert all(table["methods"][k]["localising"] for k in ("fc", "chexgcn", "anaxnet"))
    assert table["methods"]["anaxnet"]["paper_auc"]["AVG"] == 0.93


def test_compared_models_are_checkpoints_of_one_detector(compared):
    """The three region heads read the same detector's features, as in the paper; each is a
    checkpoint of its own kind and name, with the graphs its head needs."""
    out, _, table = compared
    detectors = []
    for kind, name in (("fc", "fasterrcnn-fc"), ("chexgcn", "chexgcn"), ("anaxnet", "anaxnet")):
        path = Path(table["methods"][kind]["checkpoint"])
        assert path == out / "models" / f"{name}.json"
        model, info = load_checkpoint(path)
        assert (info.config.head.kind, info.config.name) == (kind, name)
        assert (len(info.config.label_adjacency) == M) == (kind == "chexgcn")
        detectors.append(model.detector.state_dict())
    for other in detectors[1:]:
        assert all(torch.equal(detectors[0][k], other[k]) for k in detectors[0])
    graph = np.array(load_checkpoint(out / "models" / "chexgcn.json")[1].config.label_adjacency)
    np.testing.assert_allclose(graph.sum(axis=1), 1.0)  # rows of 1 - p and p over neighbours


def test_a_compared_baseline_reports_and_evaluates_like_anaxnet(compared, phantoms, capsys):
    out, _, _ = compared
    sample = sorted((phantoms / "files").rglob("*.dcm"))[0]
    for name in ("fasterrcnn-fc", "chexgcn"):
        model = out / "models" / f"{name}.json"
        report = Reporter.from_pretrained(model).run(sample)
        assert report.provenance.model_name == name and len(report.regions) == K
        assert main(["evaluate", "--data", str(phantoms), "--model", str(model)]) == 0
        assert "mean detector IoU" in capsys.readouterr().out


def test_globalview_is_evaluated_image_level_and_refused_for_reports(compared, phantoms, capsys):
    out, _, table = compared
    model = out / "models" / "globalview.json"
    assert main(["evaluate", "--data", str(phantoms), "--model", str(model)]) == 0
    printed = capsys.readouterr().out
    assert "does not localise" in printed
    assert table["methods"]["globalview"]["test"]["mean_iou"] is None
    sample = sorted((phantoms / "files").rglob("*.dcm"))[0]
    assert main([str(sample), "--model", str(model)]) != 0
    error = capsys.readouterr().err.strip()
    assert "no regions to report on" in error and len(error.splitlines()) == 1


def test_train_alone_makes_a_globalview_without_a_detector(phantoms, tmp_path):
    out = tmp_path / "gv.json"
    argv = ["train", "--data", str(phantoms), "--out", str(out), "--head", "globalview", *TOY]
    assert main(argv) == 0
    info = read_checkpoint_info(out)
    assert (info.config.head.kind, info.config.name) == ("globalview", "globalview")
    assert not (tmp_path / "gv.work" / "detector.safetensors").exists()  # no detector trained
    assert info.metrics["test"]["localising"] is False


def test_weights_of_one_head_do_not_load_as_another(compared):
    """Each head's weights name its own parameters: read as another kind, they are refused."""
    out, _, _ = compared
    model, info = load_checkpoint(out / "models" / "fasterrcnn-fc.json")
    config = replace(info.config, head=HeadConfig(kind="chexgcn"), label_adjacency=_label_graph())
    with pytest.raises(WeightsError, match="head"):
        InferenceModel(config, model.state_dict())


def test_info_says_what_each_compared_model_is(compared, capsys):
    out, _, _ = compared
    expected = {
        "fasterrcnn-fc": "Faster R-CNN + FC baseline",
        "chexgcn": "CheXGCN baseline, GCN [1024, 1024] over the findings' graph (tau 0.4, p 0.2)",
        "globalview": "GlobalView baseline: DenseNet169 over the whole image",
        "anaxnet": "head: GCN [512, 1024], relu",
    }
    for name, line in expected.items():
        assert main(["info", "--model", str(out / "models" / f"{name}.json")]) == 0
        assert line in capsys.readouterr().out
    assert main(["info", "--json", "--model", str(out / "models" / "chexgcn.json")]) == 0
    assert len(json.loads(capsys.readouterr().out)["label_adjacency"]) == M


def test_globalviews_class_activation_maps_are_its_grad_cam():
    """For DenseNet's pooled linear classifier, Grad-CAM (gradients averaged over the map as
    channel weights) is CAM; the maps are computed without a backward pass, checked here with
    one."""
    config = ModelConfig(head=HeadConfig(kind="globalview"), detector=DetectorConfig(image_size=64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GlobalView(config).eval()
    image = torch.rand(1, 64, 48)
    maps, probabilities = class_activation_maps(model, image)
    assert maps.shape == (M, 64, 48) and probabilities.shape == (M,)
    features = F.relu(model.net.features(model.batch([image]))).detach().requires_grad_()
    logits = model.net.classifier(F.adaptive_avg_pool2d(features, 1).flatten(1))
    np.testing.assert_allclose(torch.sigmoid(logits[0]).detach().numpy(), probabilities, rtol=1e-5)
    for m in range(M):
        (gradient,) = torch.autograd.grad(logits[0, m], features, retain_graph=True)
        cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[0, 0, :, :48]
        expected = (cam / cam.max().clamp(min=1e-12)).detach().numpy()
        np.testing.assert_allclose(maps[m], expected, atol=1e-5)


def test_explain_with_globalview_draws_its_maps(compared, tmp_path, dciodvfy, capsys):
    out, _, _ = compared
    model = out / "models" / "globalview.json"
    sample = Path(__file__).resolve().parents[1] / "samples" / "pa_normal.dcm"
    assert main([str(sample), "--explain", "--model", str(model), "-o", str(tmp_path)]) == 0
    capture, png = next(tmp_path.glob("*.explain.dcm")), next(tmp_path.glob("*.explain.png"))
    assert dciodvfy(capture) == []
    sc = pydicom.dcmread(capture)
    assert "Class activation maps" in sc.DerivationDescription
    assert sc.SeriesDescription.startswith("AI output, not for diagnostic use: globalview")
    np.testing.assert_array_equal(sc.pixel_array, np.asarray(Image.open(png).convert("RGB")))
