"""Issue 6 acceptance against a real PACS: Debian's Orthanc on loopback, started by the tests.

- Images reach the node from dcmtk's storescu, from pynetdicom, and from Orthanc itself (its
  C-STORE SCU, as a PACS forwards to an AI node); the SR and GSPS come back to Orthanc by
  C-STORE and land in the input's study, as Orthanc's REST API shows.
- The same through Orthanc's DICOMweb plugin (STOW-RS).
- A load run: 100 studies over 4 concurrent associations into ``anaxreport serve`` (a real
  process), killed with SIGKILL mid-run and restarted: 100 SRs in Orthanc, none missing, none
  duplicated, each in its own patient's study.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from _node import SAMPLES, phantom_study, store, wait_until
from _orthanc import dicomweb_plugin, free_port, orthanc_binary, start_orthanc
from conftest import _referee_missing

from anaxreport import Reporter
from anaxreport.node import DicomDestination, MetricsConfig, Node, NodeConfig, StowDestination

NODE_AE = "ANAXREPORT"
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


@pytest.fixture(scope="module")
def node_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, node_port: int):
    if orthanc_binary() is None:
        _referee_missing("Orthanc (Debian package orthanc)")
    server = start_orthanc(
        tmp_path_factory.mktemp("orthanc"), {"anax": (NODE_AE, "127.0.0.1", node_port)}
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reporter() -> Reporter:
    return Reporter.from_pretrained()


def _node(reporter: Reporter, spool: Path, port: int, *destinations) -> Node:
    config = NodeConfig(
        spool=spool,
        port=port,
        allowed_calling_aes=("STORESCU", "MODALITY", "ORTHANC"),
        destinations=destinations,
        metrics=MetricsConfig(log_interval_s=0),
    )
    node = Node(config, reporter)
    node.start()
    return node


def _storescu(port: int, path: Path, calling_ae: str = "STORESCU") -> subprocess.CompletedProcess:
    storescu = shutil.which("storescu")
    if storescu is None:
        _referee_missing("storescu (dcmtk)")
    command = [storescu, "-aet", calling_ae, "-aec", NODE_AE, "127.0.0.1", str(port), str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_storescu_pynetdicom_and_orthanc_itself_get_results_into_the_study(
    orthanc, reporter, node_port, tmp_path
):
    studies = [phantom_study(SAMPLES[i], tmp_path / f"in{i}.dcm", 100 + i) for i in range(3)]
    paths = [tmp_path / f"in{i}.dcm" for i in range(3)]
    pacs = DicomDestination(name="orthanc", ae_title=orthanc.ae_title, host="127.0.0.1",
                            port=orthanc.dicom_port)  # fmt: skip
    node = _node(reporter, tmp_path / "spool", node_port, pacs)
    try:
        assert _storescu(node.port, paths[0]).returncode == 0
        assert store(node.port, [paths[1]]) == [0x0000]
        # the PACS forwards a study it holds to the AI node (Orthanc's own C-STORE SCU)
        upload = urllib.request.Request(f"{orthanc.url}/instances", data=paths[2].read_bytes())
        instance = json.loads(urllib.request.urlopen(upload, timeout=30).read())["ID"]
        orthanc.post("/modalities/anax/store", {"Resources": [instance], "Synchronous": True})
        # an unknown calling AE is rejected: storescu fails and nothing is received
        refused = _storescu(node.port, paths[0], calling_ae="STRANGER")
        assert refused.returncode != 0 and "Association Rejected" in refused.stderr
        for ds in studies:
            wait_until(
                lambda ds=ds: {"SR", "PR"} <= set(orthanc.modalities(ds.StudyInstanceUID)),
                90,
                "the SR and the GSPS in Orthanc",
            )
        assert node.snapshot()["counts"]["received"] == 3
    finally:
        node.stop()
    results = orthanc.instances_of("SR") + orthanc.instances_of("PR")
    by_study = {ds.StudyInstanceUID: ds for ds in studies}
    assert len(results) == 6
    for result in results:
        assert result["patient_id"] == by_study[result["study"]].PatientID
    assert Counter(r["sop_class"] for r in results) == {SR_3D: 3, GSPS: 3}
    # the forwarded input and its results are one study in Orthanc
    forwarded = studies[2]
    assert orthanc.modalities(forwarded.StudyInstanceUID) == {
        forwarded.Modality: 1,
        "SR": 1,
        "PR": 1,
    }


def test_stow_rs_round_trip(orthanc, reporter, tmp_path):
    if dicomweb_plugin() is None:
        _referee_missing("Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb)")
    ds = phantom_study(SAMPLES[3], tmp_path / "in.dcm", 200)
    stow = StowDestination(name="dicomweb", url=orthanc.dicomweb_url)
    node = _node(reporter, tmp_path / "spool", 0, stow)
    try:
        assert _storescu(node.port, tmp_path / "in.dcm").returncode == 0
        wait_until(
            lambda: orthanc.modalities(ds.StudyInstanceUID) == {"SR": 1, "PR": 1},
            90,
            "the SR and the GSPS through STOW-RS",
        )
    finally:
        node.stop()
    url = f"{orthanc.dicomweb_url}/studies/{ds.StudyInstanceUID}/instances"
    with urllib.request.urlopen(url, timeout=10) as response:  # QIDO-RS sees them too
        instances = json.loads(response.read())
    classes = sorted(i["00080016"]["Value"][0] for i in instances)
    assert classes == sorted([SR_3D, GSPS])
    assert all(i["0020000D"]["Value"][0] == ds.StudyInstanceUID for i in instances)


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``anaxreport serve`` as its own process (so SIGKILL is a real crash)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "anaxreport", "serve", "--config", str(config)],
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _sender(port: int, paths: list[Path], done: list[str], deadline: float) -> None:
    """One modality sending a study every half second, each until it is acknowledged,
    reconnecting (as a real sender does) when the node goes away mid-association."""
    for path in paths:
        while time.monotonic() < deadline:
            try:
                if store(port, [path]) == [0x0000]:
                    done.append(path.name)
                    break
            except (ConnectionError, OSError):
                pass
            time.sleep(0.2)
        time.sleep(0.5)


def test_load_run_with_kill_9_and_restart(orthanc, tmp_path):
    orthanc.clear()
    count, associations = 100, 4
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    studies = [phantom_study(SAMPLES[i % 5], inputs / f"{i:03d}.dcm", 1000 + i)
               for i in range(count)]  # fmt: skip
    port = free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
[node]
ae_title = "{NODE_AE}"
port = {port}
allowed_calling_aes = ["MODALITY"]
spool = "spool"

[[destinations]]
type = "dimse"
name = "orthanc"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[metrics]
log_interval_s = 5
"""
    )
    log = tmp_path / "node.log"
    node = _serve(config, log)
    reported = tmp_path / "spool" / "reported"
    done: list[str] = []
    deadline = time.monotonic() + 480
    paths = sorted(inputs.iterdir())
    senders = [
        threading.Thread(target=_sender, args=(port, paths[i::associations], done, deadline))
        for i in range(associations)
    ]
    try:
        wait_until(lambda: "listening" in log.read_text(), 120, "the node to listen")
        for sender in senders:
            sender.start()
        wait_until(lambda: reported.is_dir() and len(list(reported.iterdir())) >= 10, 240,
                   "10 studies reported before the crash", interval=0.5)  # fmt: skip
        node.send_signal(signal.SIGKILL)
        node.wait(30)
        killed_at = len(done)
        node = _serve(config, log)
        for sender in senders:
            sender.join(max(1.0, deadline - time.monotonic()))
        assert len(done) == count, f"only {len(done)} of {count} acknowledged"
        wait_until(lambda: orthanc.count("SR") >= count, 300, f"{count} SRs", interval=2)
        time.sleep(2)  # a duplicate would arrive now
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(60)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    starts = [e for e in events if e["event"] == "starting"]
    assert len(starts) == 2 and starts[1]["count"] > 0, "the restart found pending inputs"
    assert 0 < killed_at < count, "the crash happened mid-run"
    srs = orthanc.instances_of("SR")
    by_study = Counter(sr["study"] for sr in srs)
    assert len(srs) == count
    assert set(by_study) == {ds.StudyInstanceUID for ds in studies}  # none missing
    assert set(by_study.values()) == {1}  # none duplicated
    patients = {ds.StudyInstanceUID: ds.PatientID for ds in studies}
    assert all(sr["patient_id"] == patients[sr["study"]] for sr in srs)
    assert {sr["sop_class"] for sr in srs} == {SR_3D}
