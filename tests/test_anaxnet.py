"""The AnaXNet head and region features against the paper's equations."""

import dataclasses

import pytest
import torch

from anaxreport.errors import ConfigurationError
from anaxreport.model.anaxnet import AnaXNet, AnaXNetHead
from anaxreport.model.config import DetectorConfig, HeadConfig, ModelConfig
from anaxreport.model.detector import extract_regions, select_best_per_class

K, M, D = 18, 9, 1024


def _head(config: HeadConfig | None = None, adjacency: torch.Tensor | None = None) -> AnaXNetHead:
    torch.manual_seed(0)
    a = adjacency if adjacency is not None else (torch.rand(K, K) > 0.7).float()
    a.fill_diagonal_(1)
    return AnaXNetHead(config or HeadConfig(), a, M).eval()


def test_head_shapes_and_gcn_sizes():
    head = _head()
    assert [layer.lin.weight.shape[0] for layer in head.gcn] == [512, 1024]
    out = head(torch.rand(3, K, D))
    assert out.logits.shape == (3, K, M)
    assert out.attention.shape == (3, K, K)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, K))


def test_attention_and_classifier_follow_eqs_4_and_5():
    head = _head()
    r = torch.rand(2, K, D)
    with torch.no_grad():
        z = r
        for layer in head.gcn:
            z = torch.relu(layer(z, head.adjacency))
        q = torch.softmax(r @ z.transpose(1, 2), dim=-1) @ r
        expected = torch.cat([r, q], -1) @ head.classifier.weight.T + head.classifier.bias
        out = head(r)
    torch.testing.assert_close(out.logits, expected)


def test_gcn_layer_is_symmetric_normalised_a_r_w():
    head = _head()
    layer = head.gcn[0]
    x = torch.rand(1, K, D)
    a = head.adjacency
    d = a.sum(-1).pow(-0.5)
    expected = (d[:, None] * a * d[None, :]) @ (x @ layer.lin.weight.T)
    torch.testing.assert_close(layer(x, a), expected, rtol=1e-4, atol=1e-5)


def test_a_sample_does_not_depend_on_its_batch_mates():
    # the official code's dim-less nn.Softmax() normalised across the batch; ours must not
    head = _head()
    batch = torch.rand(4, K, D)
    alone = head(batch[:1]).logits
    together = head(batch).logits[:1]
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)
    other = batch.clone()
    other[1:] = torch.rand(3, K, D) * 5
    torch.testing.assert_close(head(other).logits[:1], together, rtol=1e-4, atol=1e-5)


def test_official_code_variants_build_and_run():
    config = HeadConfig(
        gcn_sizes=(2048, 1024),
        activation="leaky_relu",
        normalize_adjacency=False,
        classifier="sum_layernorm",
    )
    head = _head(config)
    r = torch.rand(2, K, D)
    assert head(r).logits.shape == (2, K, M)
    # raw adjacency: the first layer is exactly A (R W)
    layer = head.gcn[0]
    torch.testing.assert_close(layer(r, head.adjacency), head.adjacency @ layer.lin(r))


def test_config_validation_and_json_round_trip():
    with pytest.raises(ConfigurationError, match="last GCN size"):
        HeadConfig(gcn_sizes=(512, 256))
    with pytest.raises(ConfigurationError, match="backbone"):
        DetectorConfig(backbone="vgg16")
    config = ModelConfig(detector=DetectorConfig(backbone="resnet18", image_size=256))
    assert ModelConfig.from_dict(config.to_dict()) == config
    data = config.to_dict()
    data["head"]["gcn_size"] = [1]
    with pytest.raises(ConfigurationError, match="unknown keys"):
        ModelConfig.from_dict(data)
    with pytest.raises(ConfigurationError, match="region order"):
        dataclasses.replace(config, regions=tuple(reversed(config.regions)))


def test_best_box_per_class_above_threshold():
    boxes = torch.tensor(
        [[0, 0, 5, 5], [1, 1, 6, 6], [2, 2, 8, 8], [3, 3, 9, 9]], dtype=torch.float
    )
    labels = torch.tensor([1, 1, 3, 18])
    scores = torch.tensor([0.6, 0.9, 0.04, 0.5])
    best, best_scores, found = select_best_per_class(boxes, labels, scores, K, threshold=0.05)
    assert found.tolist() == [True] + [False] * 16 + [True]
    torch.testing.assert_close(best[0], boxes[1])  # the higher score of the two class-1 boxes
    torch.testing.assert_close(best[17], boxes[3])
    assert best_scores[2].item() == 0  # class 3 is below the threshold: not found
    assert torch.all(best[1:17] == 0)


def test_missing_regions_get_zero_features_and_false_mask():
    config = ModelConfig(
        detector=DetectorConfig(backbone="resnet18", fpn_channels=32, image_size=128)
    )
    model = AnaXNet(config).eval()
    detector = model.detector

    def fake_roi_heads(features, proposals, image_sizes, targets=None):
        detections = [
            {
                "boxes": torch.tensor([[10.0, 10.0, 60.0, 100.0], [70.0, 10.0, 120.0, 100.0]]),
                "labels": torch.tensor([1, 8]),
                "scores": torch.tensor([0.9, 0.8]),
            }
            for _ in image_sizes
        ]
        return detections, {}

    detector.roi_heads.forward = fake_roi_heads
    images = [torch.rand(3, 128, 96), torch.rand(3, 100, 128)]
    with torch.inference_mode():  # the reference selection runs roi_heads.forward
        regions = extract_regions(detector, images, K, threshold=0.05, selection="torchvision")
        logits = model.head(regions.features).logits
    expected_found = [i in (0, 7) for i in range(K)]
    assert regions.found.tolist() == [expected_found] * 2
    assert regions.features.shape == (2, K, D)
    missing = ~regions.found
    assert torch.all(regions.features[missing] == 0)
    assert torch.all(regions.features[regions.found].abs().sum(-1) > 0)
    assert torch.all(regions.boxes[missing] == 0)
    assert logits.shape == (2, K, M)


def test_normalized_graph_conv_is_torch_geometrics_dense_gcn():
    """Our GCN layer computes DenseGCNConv's function with its parameter names, so checkpoints
    trained with either load into the other and give the same output."""
    from torch_geometric.nn import DenseGCNConv

    from anaxreport.model.anaxnet import NormalizedGraphConv

    torch.manual_seed(0)
    ours, reference = NormalizedGraphConv(16, 8, bias=True), DenseGCNConv(16, 8)
    assert set(ours.state_dict()) == set(reference.state_dict()) == {"lin.weight", "bias"}
    reference.bias.data.normal_()
    ours.load_state_dict(reference.state_dict())
    adjacency = (torch.rand(18, 18) > 0.7).float()
    adjacency.fill_diagonal_(0.0)
    adjacency[3, 3] = 1.0  # an existing self loop stays 1, as in DenseGCNConv
    x = torch.randn(2, 18, 16)
    torch.testing.assert_close(ours(x, adjacency), reference(x, adjacency), rtol=1e-6, atol=1e-6)
