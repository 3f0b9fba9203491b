"""The paper's baselines (Faster R-CNN + FC, CheXGCN) as heads of the same model (issue 8).

Checked against their definitions (ML-GCN's graph, eqs. 7-8, and classifier generator), through
the product's inference path, and trained and evaluated end to end by the same commands as
AnaXNet.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from anaxreport.cli import main
from anaxreport.errors import ConfigurationError
from anaxreport.model.anaxnet import AnaXNet
from anaxreport.model.baselines import CheXGCNHead, FCHead, build_head
from anaxreport.model.checkpoint import load_checkpoint
from anaxreport.model.config import DetectorConfig, HeadConfig, ModelConfig
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


@pytest.mark.parametrize("kind", ["fc", "chexgcn"])
def test_a_baseline_runs_through_the_products_inference_model(kind):
    config = _config(kind, detector=DetectorConfig(backbone="resnet18", fpn_channels=16,
                                                   image_size=96, score_threshold=0.0))  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AnaXNet(config).eval()
    fast = InferenceModel.from_model(model, runtime="torch")
    image, _ = to_model_input(Reporter.from_pretrained().read(SAMPLE).pixels, 96)
    with torch.inference_mode():
        plain, ours = model([image]), fast([image])
    assert plain.attention is None and ours.attention is None
    assert torch.equal(plain.found, ours.found)
    torch.testing.assert_close(ours.probabilities, plain.probabilities, atol=1e-4, rtol=0)


@pytest.fixture(scope="module", params=["fc", "chexgcn"])
def trained(request, tmp_path_factory):
    """A baseline trained on toy phantoms by ``anaxreport train``, AnaXNet's command."""
    from anaxreport.data.phantom import generate_phantoms

    root = tmp_path_factory.mktemp(f"train-{request.param}")
    generate_phantoms(root / "data", 10, seed=7)
    out = root / "model" / f"{request.param}.json"
    argv = [
        "train", "--data", str(root / "data"), "--out", str(out), "--head", request.param,
        "--backbone", "resnet18", "--fpn-channels", "16", "--image-size", "96",
        "--detector-epochs", "1", "--head-epochs", "2", "--roi-samples", "32",
        "--rpn-proposals", "50", "--batch-size", "2", "--training-data", "toy phantoms seed 7",
    ]  # fmt: skip
    assert main(argv) == 0
    return request.param, root, out


def test_a_trained_baseline_is_a_checkpoint_like_anaxnets(trained, capsys):
    kind, root, out = trained
    _, info = load_checkpoint(out)
    assert info.config.head.kind == kind
    assert info.config.name == {"fc": "fasterrcnn-fc", "chexgcn": "chexgcn"}[kind]
    if kind == "chexgcn":  # built from the training labels: rows of 1 - p and p over neighbours
        graph = np.array(info.config.label_adjacency)
        assert graph.shape == (M, M)
        np.testing.assert_allclose(graph.sum(axis=1), 1.0)
    else:
        assert info.config.label_adjacency == ()
    report = Reporter.from_pretrained(out).run(sorted((root / "data" / "files").rglob("*.dcm"))[0])
    assert report.provenance.model_name == info.config.name
    assert main(["evaluate", "--data", str(root / "data"), "--model", str(out)]) == 0
    assert "AVG" in capsys.readouterr().out


def test_a_changed_kind_does_not_load_anothers_weights(trained):
    """The weights name their head's parameters: a checkpoint read as another kind is refused."""
    _, _, out = trained
    model, info = load_checkpoint(out)
    other = "chexgcn" if info.config.head.kind == "fc" else "fc"
    config = dataclasses.replace(
        info.config,
        head=HeadConfig(kind=other),
        label_adjacency=_label_graph() if other == "chexgcn" else (),
    )
    with pytest.raises(Exception, match="head"):
        InferenceModel(config, model.state_dict(), runtime="torch")
