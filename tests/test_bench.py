"""``anaxreport bench``: the numbers are real measurements with the right structure.

Nothing here asserts a speed: the checks are that the FLOPs come from torch's own counter on
the product's model, that the floor and the ratio are what they say, and that every stage ran.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _models import EngineAsTorch, tiny_checkpoint
from torch.utils.flop_counter import FlopCounterMode

from anaxreport.bench import PIPELINE, STAGES, _before_ratio_note, format_table, run_benchmark
from anaxreport.cli import main
from anaxreport.model.checkpoint import load_checkpoint, read_weights
from anaxreport.model.config import DetectorConfig
from anaxreport.model.preprocess import to_model_input
from anaxreport.reporter import Reporter

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "pa_normal.dcm"
# one thread: on a busy 2-core machine two OpenMP threads wait on each other many times over
QUICK = {"repeat": 2, "warmup": 1, "threads": 1, "cold_start_runs": 0, "batch": False,
         "device": "cpu"}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("bench") / "tiny.json")


@pytest.fixture(scope="module")
def result(checkpoint: Path) -> dict:
    threads = torch.get_num_threads()
    measured = run_benchmark(checkpoint, [SAMPLE], **QUICK)
    assert torch.get_num_threads() == threads  # --threads is the benchmark's alone
    return measured


def test_flops_are_torch_counts_of_the_product_model(checkpoint: Path, result: dict) -> None:
    """The product runs on ONNX Runtime and NumPy, which torch's counter cannot see: the bench
    counts the same model in torch."""
    assert result["settings"]["runtime"] == "onnxruntime"
    reporter = Reporter.from_pretrained(checkpoint, runtime="torch")
    image, _ = to_model_input(
        reporter.read(SAMPLE).pixels, reporter.info.config.detector.image_size
    )
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        reporter.model([image])
    assert result["flops"]["total"] > 0
    assert result["flops"]["total"] == counter.get_total_flops()
    counted = {
        str(op).rsplit(".", 1)[-1]: n for op, n in counter.get_flop_counts()["Global"].items()
    }
    for op in ("convolution", "addmm", "mm", "bmm"):
        assert result["flops"]["per_op"][op] == counted.get(op, 0)
    assert result["inputs"][0]["flops"] == counter.get_total_flops()


def test_floor_ratio_and_stages_are_consistent(result: dict) -> None:
    rate = result["matmul"]["best_gflops"]
    assert rate > 0
    assert rate == max(result["matmul"]["gflops_by_size"].values())
    assert result["matmul"]["threads"] == result["settings"]["threads"] == 1
    before = result["matmul"]["before_model_runs"]  # the rate timed before, kept beside it
    assert before["best_gflops"] == max(before["gflops_by_size"].values()) > 0
    assert set(before["gflops_by_size"]) == set(result["matmul"]["gflops_by_size"])
    assert result["ratio_to_rate_before_runs"] == pytest.approx(
        result["model_s"] * before["best_gflops"] * 1e9 / result["flops"]["total"]
    )
    assert result["floor_s"] == pytest.approx(result["flops"]["total"] / (rate * 1e9))
    assert set(result["stages"]) == set(STAGES)
    for name, stage in result["stages"].items():
        assert stage["median_ms"] > 0, name
        assert stage["runs"] == [2], name
    model_ms = result["stages"]["model total"]["median_ms"]
    assert result["model_s"] == pytest.approx(model_ms / 1e3)
    assert result["ratio"] == pytest.approx(result["model_s"] / result["floor_s"])
    inner = sum(result["stages"][s]["median_ms"] for s in ("backbone", "rpn", "region features",
                                                          "gcn head"))  # fmt: skip
    assert inner < model_ms  # the hooked parts lie inside the end-to-end call
    per_stage = result["flops"]["per_stage"]  # every counted FLOP is in one model stage
    assert sum(per_stage.values()) == pytest.approx(result["flops"]["total"])
    assert per_stage["backbone"] > per_stage["gcn head"] > 0
    assert per_stage["rpn"] == 0  # the engine's: the proposals' selection, its head is a graph's
    for name, flops in (*per_stage.items(), ("model total", result["flops"]["total"])):
        stage = result["stages"][name]
        if not flops:
            assert "floor_ms" not in stage, name
            continue
        assert stage["floor_ms"] == pytest.approx(flops / (rate * 1e9) * 1e3), name
        assert stage["x_floor"] == pytest.approx(stage["median_ms"] / stage["floor_ms"]), name
    assert result["stages"]["model total"]["x_floor"] == pytest.approx(result["ratio"])
    # the engine's graphs run inside their stages: each stage's time in them is part of it
    in_runtime = result["onnxruntime"]
    assert list(in_runtime["per_stage_ms"]) == ["backbone", "rpn", "region features", "gcn head"]
    for name, ms in in_runtime["per_stage_ms"].items():
        assert 0 < ms <= result["stages"][name]["median_ms"], name
    assert 0 < in_runtime["ms"] <= model_ms
    assert in_runtime["rest_ms"] == pytest.approx(model_ms - in_runtime["ms"])
    assert in_runtime["x_floor"] == pytest.approx(in_runtime["ms"] / (result["floor_s"] * 1e3))
    assert "floor_ms" not in result["stages"]["decode"]
    pipeline_ms = sum(result["stages"][s]["median_ms"] for s in PIPELINE)
    assert result["pipeline"]["ms"] == pytest.approx(pipeline_ms)
    assert result["pipeline"]["percent_of_model"] == pytest.approx(100 * pipeline_ms / model_ms)
    assert result["cold_start"] is None and result["batch"] is None
    assert "skipped" in result["gpu"]
    assert result["rss"]["process_peak_mib"] > 0
    assert result["checkpoint"]["name"] == "anaxnet-test"
    assert result["inputs"][0]["model_input"] == [96, 83]


def test_the_torch_model_is_clocked_by_its_hooks_with_every_stages_floor(checkpoint: Path):
    """``--runtime torch`` (the GPU leg's model too): forward hooks split the stages, and its
    rpn stage holds the RPN head's convolutions, so it has a floor of its own."""
    measured = run_benchmark(checkpoint, [SAMPLE], **{**QUICK, "repeat": 1}, runtime="torch")
    assert measured["settings"]["runtime"] == "torch"
    assert measured["flops"]["per_stage"]["rpn"] > 0
    for name in ("backbone", "rpn", "region features", "gcn head", "model total"):
        assert measured["stages"][name]["x_floor"] > 0, name
    assert measured["onnxruntime"] is None
    assert "model in torch" in format_table(measured)
    assert "ONNX Runtime's graphs" not in format_table(measured)


def test_table_names_every_stage_and_headline(result: dict) -> None:
    table = format_table(result)
    for name in STAGES:
        assert f"\n{name} " in table
    for headline in ("FLOPs per forward", "fp32 matmul rate", "compute floor", "peak RSS",
                     "% of model time", "in ONNX Runtime's graphs"):  # fmt: skip
        assert headline in table
    assert f"× the floor, target ≤ 1.2×{_before_ratio_note(result)}\n" in table


def test_the_table_says_when_the_graphs_alone_miss_the_target(result: dict) -> None:
    """Then no change to the NumPy and Python between the graphs can meet it on this machine
    (an AVX-512 host, where the floor's matrix multiply outruns the convolutions)."""
    assert result["target_ratio"] == 1.2
    for x_floor, said in ((1.27, True), (1.19, False)):
        changed = {**result, "onnxruntime": {**result["onnxruntime"], "x_floor": x_floor}}
        assert ("the graphs alone are above the 1.2× target" in format_table(changed)) is said


def test_cli_writes_the_same_keys(checkpoint: Path, result: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "studies"  # a walked folder's README is no input, and no failure
    folder.mkdir()
    shutil.copyfile(SAMPLE, folder / SAMPLE.name)
    (folder / "README.md").write_text("phantoms\n")
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(checkpoint), "--inputs", str(folder), "--repeat", "1",
            "--warmup", "0", "--threads", "1", "--no-cold-start", "--no-batch", "--device", "cpu",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    written = json.loads(out.read_text())
    assert set(written) == set(result)
    assert set(written["stages"]) == set(result["stages"])
    assert written["flops"]["total"] == result["flops"]["total"]
    assert [i["source"] for i in written["inputs"]] == [str((folder / SAMPLE.name).resolve())]
    assert written["skipped"] == []
    assert all(stage["runs"] == [1] for stage in written["stages"].values())
    assert "model total" in capsys.readouterr().out


def test_bad_settings_are_configuration_errors(checkpoint: Path, capsys) -> None:
    assert main(["bench", "--model", str(checkpoint), "--repeat", "0"]) == 9
    assert "repeat" in capsys.readouterr().err
    if not torch.cuda.is_available():
        argv = ["bench", "--model", str(checkpoint), "--device", "cuda", "--no-batch"]
        assert main(argv) == 9


def test_stages_are_timed_in_rounds_in_the_products_order() -> None:
    """Every stage's runs span the same stretch of the machine's drift, each after the stage
    before it (as in the product), not in a burst of its own."""
    from anaxreport.bench import _sample_rounds

    order: list[str] = []

    def stage(name: str):
        return lambda: order.append(name) or {name: 0.001}

    runs = _sample_rounds([stage("decode"), stage("model"), stage("sr")], 1, 3, budget=0.0)
    assert order == ["decode", "model", "sr"] + ["decode", "model", "sr"] * 3
    assert runs == {name: [0.001] * 3 for name in ("decode", "model", "sr")}


def test_each_rounds_renderers_take_the_report_its_rules_made(checkpoint: Path, monkeypatch):
    """As in the product: a report's caches (the text FHIR embeds, derived ids) are not
    carried from one round to the next; the SR and GSPS renderers write the files."""
    from types import SimpleNamespace

    import anaxreport.bench as bench
    from anaxreport.batch import FORMATS, RenderOptions, render

    reporter = Reporter.from_pretrained(checkpoint)
    radiograph = reporter.read(SAMPLE)
    study = SimpleNamespace(path=SAMPLE, radiograph=radiograph,
                            findings=reporter.predict(radiograph))  # fmt: skip
    rendered = []

    def recorded_render(report, fmt, options):
        out = render(report, fmt, options)
        rendered.append((fmt, report, out))  # kept alive: ids are not reused
        return out

    monkeypatch.setattr(bench, "render", recorded_render)
    clock = bench._ModelClock(reporter.model)
    with torch.inference_mode():
        bench._time_study(reporter, clock, study, RenderOptions(formats=FORMATS), 0, 3, 0.0)
    clock.close()
    rounds = [rendered[i : i + len(FORMATS)] for i in range(0, len(rendered), len(FORMATS))]
    assert len(rounds) == 3
    reports = [{id(report) for _, report, _ in r} for r in rounds]
    assert all(len(r) == 1 for r in reports) and len(set.union(*reports)) == 3
    documents = [out for r in rounds for fmt, _, out in r if fmt in ("sr", "gsps")]
    assert len(documents) == 6
    assert all(type(out) is bytes and out[128:132] == b"DICM" for out in documents)


def test_the_batched_model_is_timed_per_study_against_a_rate_of_its_own(
    checkpoint: Path, result: dict
) -> None:
    """The batch CLI's model line: ``size`` copies of each study per pass, time per study,
    against the matmul rate timed between those passes."""
    from types import SimpleNamespace

    from anaxreport.bench import CPU_MATMUL_SIZES, _time_batched, matmul_calls

    reporter = Reporter.from_pretrained(checkpoint)
    radiograph = reporter.read(SAMPLE)
    passes: list[int] = []
    predict_many = reporter.predict_many
    reporter.predict_many = lambda batch: passes.append(len(batch)) or predict_many(batch)
    studies = [SimpleNamespace(radiograph=radiograph, flops={"total": f}) for f in (1e9, 3e9)]
    matmul = matmul_calls(CPU_MATMUL_SIZES, torch.device("cpu"))
    with torch.inference_mode():
        batched = _time_batched(reporter, studies, 3, repeat=2, budget=0.0, matmul=matmul)
    assert passes == [3] * 6  # per study: a warm-up pass, then two timed
    rate = batched["matmul"]["best_gflops"]
    assert batched["batch_size"] == 3 and rate > 0
    assert batched["floor_ms"] == pytest.approx((1e9 + 3e9) / 2 / (rate * 1e9) * 1e3)
    assert len(batched["per_study_ms"]) == 2 and min(batched["per_study_ms"]) > 0
    assert batched["median_ms"] == pytest.approx(sum(batched["per_study_ms"]) / 2)
    assert batched["ratio"] == pytest.approx(batched["median_ms"] / batched["floor_ms"])
    table = format_table({**result, "batched_model": batched})
    line = f"model in batches of 3 (as the batch CLI runs it): {batched['median_ms']:.1f} ms"
    assert line in table


def test_batch_throughput_runs_the_product_and_measures_the_batch_clis_memory(
    checkpoint: Path, result: dict
) -> None:
    """In this process for the throughput, and the batch CLI in a fresh one for its peak RSS
    (the bench's own, with its torch twin, is no measure of the product's)."""
    from anaxreport.bench import batch_throughput

    reporter = Reporter.from_pretrained(checkpoint)
    batch = batch_throughput(reporter, [SAMPLE], studies=2, workers=(1,), model=checkpoint)
    assert batch["studies"] == 2 and [r["workers"] for r in batch["runs"]] == [1]
    assert batch["runs"][0]["statuses"] == {"reported": 2}
    cli = batch["cli"]
    assert cli["workers"] == 1 and cli["seconds"] > 0 and 100 < cli["peak_rss_mib"] < 4096
    assert cli["command"][-2:] == ["--model", str(checkpoint)]
    rss = {**result["rss"], "batch_cli_peak_mib": cli["peak_rss_mib"]}
    table = format_table({**result, "batch": batch, "rss": rss})
    assert f"{cli['peak_rss_mib']:.0f} MiB (batch CLI, workers 1)" in table


def test_reference_is_a_random_model_of_torchvisions_default_size(monkeypatch, capsys) -> None:
    """--reference times the issue's reference model (ResNet-50-FPN, 512 px, 1000 proposals),
    written for the run and gone after it."""
    import anaxreport.bench as bench

    seen = {}

    def fake_run(model, inputs, **_):
        _, info = read_weights(model)
        seen.update(config=info.config, data=info.provenance["training_data"], path=model)
        return {"fake": True}

    monkeypatch.setattr(bench, "run_benchmark", fake_run)
    monkeypatch.setattr(bench, "format_table", lambda result: "table")
    assert main(["bench", "--reference", "--no-cold-start", "--no-batch"]) == 0
    detector = seen["config"].detector
    assert detector == DetectorConfig(score_threshold=0.0)  # torchvision's defaults otherwise
    assert (detector.backbone, detector.image_size, detector.rpn_post_nms_top_n_test) == (
        "resnet50",
        512,
        1000,
    )
    assert "random weights" in seen["data"] and not seen["path"].exists()
    with pytest.raises(SystemExit):
        main(["bench", "--reference", "--model", "x.json"])
    assert "not allowed with" in capsys.readouterr().err


def test_the_gpu_leg_measures_its_agreement_with_the_cpu(checkpoint: Path) -> None:
    """What the GPU leg reports beside its timings, computed here between two CPU runtimes
    (this machine has no GPU): the worst differences over the studies, and whether the same
    regions were found."""
    from types import SimpleNamespace

    from anaxreport.bench import _gpu_agreement

    torch_model = Reporter.from_pretrained(checkpoint, runtime="torch")
    onnx_model = EngineAsTorch(load_checkpoint(checkpoint)[0])
    studies = [SimpleNamespace(radiograph=torch_model.read(SAMPLE))]
    size = torch_model.info.config.detector.image_size
    cpu = torch.device("cpu")
    same = _gpu_agreement(torch_model.model, torch_model.model, studies, size, cpu)
    assert same == {"boxes_px": 0.0, "scores": 0.0, "probabilities": 0.0,
                    "same_regions_found": True}  # fmt: skip
    other = _gpu_agreement(torch_model.model, onnx_model, studies, size, cpu)
    assert other["same_regions_found"]
    assert 0.0 < other["probabilities"] < 1e-4 and other["boxes_px"] < 0.01


def test_the_gpu_leg_checks_the_function_with_tf32_off_and_reports_both(
    result: dict, monkeypatch
) -> None:
    """TF32 (on by default for a GPU's convolutions) can move a region to another box, so the
    leg also compares in plain fp32, and puts TF32 back as the timings had it."""
    from anaxreport import bench

    before = bench._tf32_settings()  # torch's settings objects refuse monkeypatch's undo
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with bench._tf32_off():
            inside = bench._tf32_settings()
        assert bench._tf32_settings() == {"matmul": True, "cudnn": True}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before["matmul"]
        torch.backends.cudnn.allow_tf32 = before["cudnn"]
    assert inside == {"matmul": False, "cudnn": False}

    apart = {"boxes_px": 470.0, "scores": 0.02, "probabilities": 0.24, "same_regions_found": True}
    exact = {"boxes_px": 0.003, "scores": 2e-5, "probabilities": 3e-5, "same_regions_found": True}
    stages = {"model total": {"median_ms": 10.0}}
    gpu = {"device": "H100", "model_s": 0.01, "floor_s": 0.001, "ratio": 10.0, "stages": stages,
           "matmul": {"best_gflops": 25000.0}, "agreement": apart, "agreement_fp32": exact,
           "tf32": {"matmul": False, "cudnn": True}}  # fmt: skip
    line = next(
        line for line in format_table({**result, "gpu": gpu}).splitlines()
        if line.startswith("GPU against")
    )  # fmt: skip
    assert "probabilities 3.0e-05 apart in fp32 (TF32 off)" in line
    assert "probabilities 2.4e-01 apart as timed (TF32 convolutions on)" in line
