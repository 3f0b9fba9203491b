"""Explanation overlays (issue 8): which regions drove each finding, drawn from the model's own
arithmetic, as PNG and as a DICOM Secondary Capture that dciodvfy accepts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from anaxreport.cli import main
from anaxreport.errors import ConfigurationError, ExportError
from anaxreport.model.anaxnet import AnaXNet
from anaxreport.model.baselines import build_head
from anaxreport.model.checkpoint import save_checkpoint
from anaxreport.model.config import DetectorConfig, HeadConfig, ModelConfig
from anaxreport.model.graph import label_adjacency
from anaxreport.render.explain import GRID, TITLE, targets
from anaxreport.reporter import Reporter
from anaxreport.vocab import FINDINGS, REGIONS, finding, region

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EFFUSION = SAMPLES / "pa_effusion_right.dcm"


@pytest.fixture(scope="module")
def reporter() -> Reporter:
    return Reporter.from_pretrained()


@pytest.fixture(scope="module")
def explained(reporter):
    return reporter.explain(EFFUSION)


@pytest.mark.parametrize("kind", ["anaxnet", "fc", "chexgcn"])
def test_the_shares_add_up_to_each_logit(kind):
    """Over the source regions, the shares of a region's logit are that logit less the bias;
    the baselines' regions are their own and only drivers."""
    graph = label_adjacency(np.random.default_rng(0).random((20, 18, 9)) < 0.3)
    config = ModelConfig(
        head=HeadConfig(kind=kind),
        label_adjacency=tuple(map(tuple, graph)) if kind == "chexgcn" else (),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = build_head(config).eval()
    regions = torch.rand(2, 18, 1024)
    with torch.inference_mode():
        out = head(regions)
        shares = head.contributions(regions, out.attention)
    bias = getattr(getattr(head, "classifier", None), "bias", None)
    total = shares.sum(dim=2) + (0 if bias is None else bias)
    torch.testing.assert_close(total, out.logits, rtol=1e-4, atol=1e-5)
    off_diagonal = shares.masked_select(~torch.eye(18, dtype=torch.bool)[None, :, :, None])
    assert (off_diagonal.abs().max() > 0) == (kind == "anaxnet")


def test_the_official_classifier_has_no_exact_split():
    head = build_head(ModelConfig(head=HeadConfig(classifier="sum_layernorm"))).eval()
    regions = torch.rand(1, 18, 1024)
    with pytest.raises(ConfigurationError, match="paper's classifier"):
        head.contributions(regions, head(regions).attention)


def test_explaining_changes_no_finding(reporter, explained):
    plain = reporter.run(EFFUSION)
    assert [r.probabilities for r in explained.regions] == [r.probabilities for r in plain.regions]
    assert explained.calls == plain.calls
    shares = explained.source.contributions.shares
    assert shares.shape == (18, 18, 9) and not shares.flags.writeable


def test_the_png_draws_the_regions_that_drove_the_effusion_red(explained):
    picture = np.asarray(Image.open(io.BytesIO(explained.to_explanation_png())).convert("RGB"))
    effusion = finding("pleural effusion")
    chosen = targets(explained, effusion)
    angle = region("right costophrenic angle")
    assert REGIONS.index(angle) in chosen  # the rules called it there
    drivers = explained.source.contributions.drivers(effusion, chosen)
    assert drivers[REGIONS.index(angle)] > 0
    assert FINDINGS.index(effusion) == 1  # its panel: row 0, column 1 of the grid
    panel_width = picture.shape[1] // GRID
    scale = panel_width / explained.image.columns
    box = explained.region(angle).box
    x = int(panel_width + (box.x1 + box.x2) / 2 * scale)
    y = int(TITLE + (box.y1 + box.y2) / 2 * scale)
    red, green, blue = (int(v) for v in picture[y, x])
    assert red > blue + 30 and red > green + 30, (red, green, blue)


def test_explain_writes_a_secondary_capture_a_viewer_can_show(tmp_path, dciodvfy, capsys):
    out = tmp_path / "out"
    assert main([str(EFFUSION), "-o", str(out), "--explain", "--format", "json"]) == 0
    capture = next(out.glob("*.explain.dcm"))
    png = next(out.glob("*.explain.png"))
    assert dciodvfy(capture) == []
    sc = pydicom.dcmread(capture)
    source = pydicom.dcmread(EFFUSION, stop_before_pixels=True)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel) == ("RGB", 3)
    assert sc.BurnedInAnnotation == "YES" and list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert "not for diagnostic use" in sc.SeriesDescription
    assert "sha256" in sc.ImageComments and "phantom" in sc.ImageComments
    drawn = np.asarray(Image.open(png).convert("RGB"))
    np.testing.assert_array_equal(sc.pixel_array, drawn)  # the same picture in both
    summary = (out / "summary.csv").read_text()
    assert ".explain.png" in summary and ".explain.dcm" in summary


def test_explain_without_an_output_folder_writes_beside_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([str(EFFUSION), "--explain"]) == 0
    assert "pleural effusion" in capsys.readouterr().out.lower()
    assert len(list(tmp_path.glob("*.explain.png"))) == 1
    assert len(list(tmp_path.glob("*.explain.dcm"))) == 1


def test_a_report_without_its_explanation_cannot_draw_one(reporter):
    with pytest.raises(ExportError, match="without one"):
        reporter.run(EFFUSION).to_explanation_png()


def test_explain_refuses_the_official_classifier_up_front(tmp_path, capsys):
    config = ModelConfig(
        name="official",
        head=HeadConfig(classifier="sum_layernorm"),
        detector=DetectorConfig(backbone="resnet18", fpn_channels=16, image_size=96),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        path = tmp_path / "official.json"
        save_checkpoint(AnaXNet(config), path, provenance={"training_data": "random weights"})
    status = main([str(EFFUSION), "--explain", "--model", str(path), "-o", str(tmp_path / "o")])
    assert status == ConfigurationError("").exit_code
    error = capsys.readouterr().err.strip()
    assert "does not split by region" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing was made
