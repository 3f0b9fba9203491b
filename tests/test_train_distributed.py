"""Training under torchrun: two CPU processes (gloo) against one, and the rank sharding."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from anaxreport.cli import main
from anaxreport.data.phantom import generate_phantoms
from anaxreport.distributed import (
    interleave_shards,
    launch_env,
    resolve_amp,
    resolve_device,
    shard_indices,
    shard_order,
)
from anaxreport.errors import ConfigurationError
from anaxreport.model.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _argv(data: Path, out: Path, detector_epochs: int = 1) -> list[str]:
    return [
        "train", "--data", str(data), "--out", str(out), "--device", "cpu",
        "--backbone", "resnet18", "--fpn-channels", "16", "--image-size", "96",
        "--detector-epochs", str(detector_epochs), "--head-epochs", "1", "--roi-samples", "32",
        "--rpn-proposals", "50", "--batch-size", "2", "--training-data", "toy phantoms seed 7",
    ]  # fmt: skip


def _torchrun(argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m anaxreport ARGV`` from this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(nproc), "-m", "anaxreport", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One in-process run and one two-process torchrun run of the same command."""
    root = tmp_path_factory.mktemp("ddp")
    generate_phantoms(root / "data", 6, seed=7)  # 3 train, 2 valid, 1 test: a rank gets none
    one, two = root / "one" / "toy.json", root / "two" / "toy.json"
    assert main(_argv(root / "data", one)) == 0
    proc = _torchrun(_argv(root / "data", two))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, one, two, proc


def _keys(tree: object, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return {prefix}
    return {key for k, v in tree.items() for key in _keys(v, f"{prefix}/{k}")}


def test_torchrun_writes_the_checkpoint_one_process_writes(runs):
    _, one, two, _ = runs
    model_1, info_1 = load_checkpoint(one)
    model_2, info_2 = load_checkpoint(two)
    # weights on the CPU with the same keys and shapes: no DDP "module." prefix
    shapes_1 = {k: tuple(v.shape) for k, v in model_1.state_dict().items()}
    assert shapes_1 == {k: tuple(v.shape) for k, v in model_2.state_dict().items()}
    assert all(t.device.type == "cpu" for t in model_2.state_dict().values())
    config_1, config_2 = info_1.config, info_2.config
    assert config_2.detector == config_1.detector and config_2.head == config_1.head
    assert config_2.adjacency == config_1.adjacency  # the graph comes from the labels alone
    assert np.array(config_2.adjacency).shape == (18, 18)
    assert len(config_2.thresholds) == len(config_1.thresholds) == 9
    assert _keys(info_2.metrics) == _keys(info_1.metrics)
    assert info_2.provenance["images"] == info_1.provenance["images"]
    assert (info_1.provenance["world_size"], info_2.provenance["world_size"]) == (1, 2)
    assert info_2.provenance["device"] == "cpu" and info_2.provenance["mixed_precision"] is None


def test_only_rank_zero_reports_and_writes(runs):
    _, one, two, proc = runs
    assert proc.stdout.count("AVG") == 1  # the score table, once
    assert proc.stderr.count(f"wrote {two}") == 1
    resume_1 = load_file(str(one.parent / "toy.work" / "detector.safetensors"))
    resume_2 = load_file(str(two.parent / "toy.work" / "detector.safetensors"))
    assert set(resume_2) == set(resume_1)  # resume state without the DDP wrapper's prefix
    assert sorted(p.name for p in two.parent.iterdir()) == sorted(
        p.name for p in one.parent.iterdir()
    )


@pytest.mark.slow
def test_torchrun_resumes_the_detector_at_an_epoch_boundary(runs):
    root, _, two, _ = runs
    proc = _torchrun(_argv(root / "data", two, detector_epochs=2))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming the detector at epoch 1" in proc.stderr
    assert "detector epoch 1:" not in proc.stderr and "detector epoch 2:" in proc.stderr
    assert load_checkpoint(two)[1].provenance["detector_epochs"] == 2


@pytest.mark.parametrize("n", [1, 3, 12, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_epoch_shards_share_one_permutation_and_cover_it(n, world):
    shards = [shard_order(n, torch.Generator().manual_seed(5), r, world) for r in range(world)]
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    per_rank = math.ceil(n / world)
    assert all(len(s) == per_rank for s in shards)  # every rank takes as many steps
    # interleaved back, the shards are the one permutation, padded by wrapping round
    rebuilt = interleave_shards(torch.stack(shards, dim=1), per_rank * world)
    assert rebuilt[:n].tolist() == permutation.tolist()
    assert set(rebuilt[n:].tolist()) <= set(permutation.tolist())
    if n % world == 0:  # disjoint and covering
        assert sorted(torch.cat(shards).tolist()) == list(range(n))


def test_one_process_order_is_the_plain_permutation():
    generator = torch.Generator().manual_seed(11)
    expected = torch.randperm(17, generator=torch.Generator().manual_seed(11))
    assert shard_order(17, generator).tolist() == expected.tolist()
    assert shard_order(5, None).tolist() == list(range(5))


@pytest.mark.parametrize(("n", "world"), [(0, 2), (1, 2), (2, 4), (7, 3), (8, 4), (5, 1)])
def test_sharded_work_gathers_back_in_order(n, world):
    per_rank = math.ceil(n / world)
    parts = []
    for rank in range(world):
        mine = shard_indices(n, rank, world)
        assert len(mine) <= per_rank
        parts.append(torch.cat([mine, torch.full((per_rank - len(mine),), -1)]))
    assert interleave_shards(torch.stack(parts, dim=1), n).tolist() == list(range(n))


def test_device_and_mixed_precision_rules():
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_amp(cpu, None) is None and resolve_amp(cpu, False) is None
    with pytest.raises(ConfigurationError, match="--amp needs a CUDA device"):
        resolve_amp(cpu, True)
    with pytest.raises(ConfigurationError, match="'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ConfigurationError, match="no CUDA device"):
            resolve_device("cuda")


def test_launch_environment_is_checked(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch_env() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigurationError, match="RANK=2, WORLD_SIZE=2"):
        launch_env()


def test_cli_refuses_mixed_precision_on_the_cpu(tmp_path, capsys):
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.json")]
    assert main([*argv, "--device", "cpu", "--amp"]) == ConfigurationError.exit_code
    assert "--amp needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "m.work").exists()
