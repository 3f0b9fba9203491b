"""The DICOM node in-process against pynetdicom peers: delivery, fallback, refusals, retries,
durability, logs, metrics, FHIR and TLS. The Orthanc round trips are in test_node_orthanc.py."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from _dicom_factory import acceptance_files, make_dataset
from _node import SAMPLES, RecordingPacs, phantom_study, store, wait_until
from _orthanc import free_port
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    Verification,
)

from anaxreport import Reporter
from anaxreport.node import (
    DicomDestination,
    FhirDestination,
    MetricsConfig,
    Node,
    NodeConfig,
    RetryPolicy,
    TlsConfig,
)
from anaxreport.node.spool import Spool
from anaxreport.node.telemetry import JsonFormatter
from anaxreport.node.worker import MAX_PROCESS_ATTEMPTS
from anaxreport.render.encode import encode
from anaxreport.render.uids import derived_uid

FAST_RETRY = RetryPolicy(initial_s=0.05, max_s=0.3, max_attempts=3, timeout_s=5)
SECRET_NAME, SECRET_ID = "Secret^Patient^Name", "SECRET-PID-4711"


@pytest.fixture(scope="module")
def reporter() -> Reporter:
    return Reporter.from_pretrained()


@pytest.fixture
def study(tmp_path: Path) -> pydicom.Dataset:
    """A sample as its own patient's study, with a name and ID the logs must never show."""
    path = tmp_path / "study.dcm"
    ds = phantom_study(SAMPLES[0], path, 1, PatientName=SECRET_NAME, PatientID=SECRET_ID)
    ds.filename = str(path)
    return ds


@contextmanager
def running(reporter: Reporter, spool: Path, *destinations, **settings) -> Iterator[Node]:
    config = NodeConfig(
        spool=spool,
        port=0,
        allowed_calling_aes=("MODALITY",),
        destinations=destinations,
        delivery=settings.pop("delivery", FAST_RETRY),
        metrics=settings.pop("metrics", MetricsConfig(log_interval_s=0)),
        warm_up=settings.pop("warm_up", False),
        **settings,
    )
    node = Node(config, reporter)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def pacs_destination(pacs: RecordingPacs, name: str = "pacs", **kw) -> DicomDestination:
    return DicomDestination(name=name, ae_title=pacs.ae_title, host="127.0.0.1",
                            port=pacs.port, **kw)  # fmt: skip


def node_log(caplog: pytest.LogCaptureFixture) -> list[dict]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name.startswith("anax")]


@pytest.fixture(autouse=True)
def _capture_node_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anaxreport.node")


def test_results_reach_the_pacs_in_the_source_study(reporter, study, tmp_path, caplog):
    """With the warm-up at start (a phantom through model and renderers): it sends nothing."""
    pacs = RecordingPacs()
    metrics = MetricsConfig(port=free_port(), log_interval_s=0)
    destination = pacs_destination(pacs)
    try:
        with running(reporter, tmp_path / "spool", destination, metrics=metrics,
                     warm_up=True) as node:  # fmt: skip
            assert store(node.port, [Path(study.filename)]) == [0x0000]
            wait_until(lambda: len(pacs.received) == 2, 60, "the SR and the GSPS")

            def health_now() -> dict:
                return json.loads(urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics.port}/health", timeout=5).read())  # fmt: skip

            # the node counts a delivery when the PACS's answer reaches it: after the PACS has it
            wait_until(lambda: health_now()["destinations"]["pacs"]["delivered"] == 2, 30,
                       "the node to count both deliveries")  # fmt: skip
            health = health_now()
            prometheus = urllib.request.urlopen(
                f"http://127.0.0.1:{metrics.port}/metrics", timeout=5).read().decode()  # fmt: skip
    finally:
        pacs.stop()
    # only what is sent is proposed: the two classes, and Comprehensive SR as the SR's fallback
    assert pacs.proposed == {Comprehensive3DSRStorage, ComprehensiveSRStorage,
                             GrayscaleSoftcopyPresentationStateStorage}  # fmt: skip
    expected = reporter.run(study.filename)
    by_class = {str(ds.SOPClassUID): ds for ds in pacs.received}
    sr = by_class[Comprehensive3DSRStorage]
    gsps = by_class[GrayscaleSoftcopyPresentationStateStorage]
    for result, want in ((sr, expected.to_sr()), (gsps, expected.to_gsps())):
        assert result.StudyInstanceUID == study.StudyInstanceUID
        assert result.PatientID == SECRET_ID
        assert result.SOPInstanceUID == want.SOPInstanceUID  # deterministic result UIDs
    assert (tmp_path / "spool" / "reported" / Path(study.filename).name).exists() is False
    assert len(list((tmp_path / "spool" / "reported").glob("*.dcm"))) == 1
    assert health["counts"]["received"] == 1 and health["counts"]["reported"] == 1
    assert health["destinations"]["pacs"]["delivered"] == 2
    assert health["queue_depth"] == 0 and health["outbox_depth"] == {"pacs": 0}
    assert "anaxreport_reported_total 1" in prometheus
    assert 'anaxreport_delivered_total{destination="pacs"} 2' in prometheus
    logged = node_log(caplog)
    events = [e["event"] for e in logged]
    assert {"received", "warmed-up", "reported", "delivered"} <= set(events)
    assert events.index("warmed-up") < events.index("reported")
    text = "\n".join(map(json.dumps, logged))
    assert SECRET_NAME not in text and "Secret" not in text and SECRET_ID not in text


def test_falls_back_to_comprehensive_sr_and_dead_letters_what_no_one_takes(
    reporter, study, tmp_path, dciodvfy, dsrdump, caplog
):
    no_3d = RecordingPacs("OLDPACS", (ComprehensiveSRStorage,))
    gsps_only = RecordingPacs("VIEWER", (GrayscaleSoftcopyPresentationStateStorage,))
    spool = tmp_path / "spool"
    try:
        old, viewer = (
            pacs_destination(no_3d, "old", outputs=("sr",)),
            pacs_destination(gsps_only, "viewer"),
        )
        with running(reporter, spool, old, viewer) as node:
            store(node.port, [Path(study.filename)])
            wait_until(lambda: no_3d.received and gsps_only.received, 60, "both deliveries")
            wait_until(lambda: any(Spool(spool).dead("viewer").iterdir()), 30, "a dead letter")
    finally:
        no_3d.stop()
        gsps_only.stop()
    (sr,) = no_3d.received
    original = reporter.run(study.filename).to_sr()
    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.file_meta.MediaStorageSOPClassUID == ComprehensiveSRStorage
    assert sr.SOPInstanceUID == derived_uid(original.SOPInstanceUID, "comprehensive-sr")
    original_path = tmp_path / "original.dcm"
    original.save_as(original_path, enforce_file_format=True)
    assert sr.ContentSequence == pydicom.dcmread(original_path).ContentSequence
    path = tmp_path / "comprehensive.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == [] and dsrdump(path) == []
    (gsps,) = gsps_only.received
    assert gsps.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    # the viewer takes no SR at all: the SR is refused max_attempts times, then set aside
    (dead,) = Spool(spool).dead("viewer").iterdir()
    assert "-sr-" in dead.name and not any(Spool(spool).outbox("viewer").iterdir())
    refusals = [e for e in node_log(caplog) if e["event"] == "refused-by-destination"]
    assert len(refusals) == FAST_RETRY.max_attempts - 1
    assert "no presentation context" in refusals[0]["reason"]


def test_unknown_calling_ae_and_wrong_called_ae_are_rejected(reporter, tmp_path, caplog):
    with running(reporter, tmp_path / "spool") as node:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="ANAXREPORT")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(Verification)
        assert stranger.associate("127.0.0.1", node.port, ae_title="ANAXREPORT").is_rejected
        assert ae.associate("127.0.0.1", node.port, ae_title="SOMEONEELSE").is_rejected
    rejected = [e for e in node_log(caplog) if e["event"] == "association-rejected"]
    assert [(e["calling_ae"], e["called_ae"], e["reason"]) for e in rejected] == [
        ("STRANGER", "ANAXREPORT", "calling AE title not allowed"),
        ("MODALITY", "SOMEONEELSE", "called AE title is not ANAXREPORT"),
    ]


def test_refused_inputs_yield_no_result_object(reporter, study, tmp_path, caplog):
    files = acceptance_files(tmp_path)
    refused = [files["lateral-view"], files["not-chest"], files["colour-image"]]
    pacs = RecordingPacs()
    spool = tmp_path / "spool"
    try:
        with running(reporter, spool, pacs_destination(pacs)) as node:
            assert store(node.port, [*refused, Path(study.filename)]) == [0] * 4
            wait_until(lambda: len(pacs.received) == 2, 60, "the good study's results")
            wait_until(lambda: node.spool.depth() == 0, 30, "an empty queue")
    finally:
        pacs.stop()
    assert {ds.StudyInstanceUID for ds in pacs.received} == {study.StudyInstanceUID}
    notes = [json.loads(p.read_text()) for p in sorted((spool / "refused").glob("*.json"))]
    assert sorted(n["reason"] for n in notes) == ["colour-image", "lateral-view", "not-chest"]
    assert len(list((spool / "refused").glob("*.dcm"))) == 3  # kept, never lost
    logged = [e for e in node_log(caplog) if e["event"] == "refused"]
    assert sorted(e["reason"] for e in logged) == ["colour-image", "lateral-view", "not-chest"]


def test_results_wait_for_a_destination_that_is_down(reporter, study, tmp_path, caplog):
    port = free_port()
    destination = DicomDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
    with running(reporter, tmp_path / "spool", destination) as node:
        store(node.port, [Path(study.filename)])
        wait_until(lambda: node.spool.outbox_depth("pacs") == 2, 60, "queued results")
        wait_until(
            lambda: any(e["event"] == "destination-unreachable" for e in node_log(caplog)),
            30,
            "an unreachable log line",
        )
        pacs = RecordingPacs(port=port)
        try:
            wait_until(lambda: len(pacs.received) == 2, 30, "delivery once the PACS is up")
        finally:
            pacs.stop()
    assert node.spool.outbox_depth("pacs") == 0


def test_a_result_the_destination_keeps_refusing_goes_to_the_dead_letters(
    reporter, study, tmp_path, caplog
):
    pacs = RecordingPacs(status=0xA900)  # "data set does not match SOP class", every time
    spool = tmp_path / "spool"
    try:
        with running(reporter, spool, pacs_destination(pacs)) as node:
            store(node.port, [Path(study.filename)])
            wait_until(lambda: len(list(node.spool.dead("pacs").iterdir())) == 2, 60, "2 dead")
    finally:
        pacs.stop()
    assert pacs.calls == 2 * FAST_RETRY.max_attempts and not pacs.received
    dead = [e for e in node_log(caplog) if e["event"] == "dead-letter"]
    assert len(dead) == 2 and all("0xA900" in e["reason"] for e in dead)


def test_a_full_spool_answers_out_of_resources_and_keeps_nothing(reporter, study, tmp_path):
    with running(reporter, tmp_path / "spool", min_free_mb=10**9) as node:
        assert store(node.port, [Path(study.filename)]) == [0xA700]
        assert node.spool.depth() == 0 and node.snapshot()["counts"]["store_refused"] == 1


def test_a_restart_finishes_what_was_pending_and_sets_aside_a_poison_input(
    reporter, study, tmp_path, caplog
):
    """What kill -9 leaves: a half-written file, an acknowledged input, a queued result, and
    an input that was being processed every time the node died."""
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, ("pacs",))
    (spool.incoming / ".half.part").write_bytes(b"half an instance")
    pending = spool.accept(Path(study.filename).read_bytes(), study.SOPInstanceUID)
    poison_source = tmp_path / "poison.dcm"
    poison_ds = phantom_study(SAMPLES[1], poison_source, 2)
    poison = spool.accept(poison_source.read_bytes(), poison_ds.SOPInstanceUID)
    for _ in range(MAX_PROCESS_ATTEMPTS):
        spool.start_attempt(poison)
    queued = reporter.run(SAMPLES[2]).to_sr()
    spool.post("pacs", f"{0:020d}-sr-{queued.SOPInstanceUID}.dcm", encode(queued))
    pacs = RecordingPacs()
    try:
        with running(reporter, spool_dir, pacs_destination(pacs)):
            wait_until(lambda: len(pacs.received) == 3, 60, "the queued SR and the pending results")
    finally:
        pacs.stop()
    assert not any(spool.incoming.iterdir())
    studies = sorted(str(ds.StudyInstanceUID) for ds in pacs.received)
    assert studies == sorted([queued.StudyInstanceUID, *[study.StudyInstanceUID] * 2])
    assert (spool_dir / "reported" / pending.path.name).is_file()
    note = json.loads((spool_dir / "failed" / f"{poison.stem}.json").read_text())
    assert note["reason"] == "worker-crash" and (spool_dir / "failed" / poison.path.name).is_file()
    assert not list(spool.pending.iterdir())  # attempt markers go with their input


class _FhirServer:
    """A FHIR endpoint that answers 503 to the first POST, then 200, keeping the bodies."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                if outer.posts == 1:
                    self.send_error(503)
                    return
                outer.bodies.append((self.headers["Content-Type"], body))
                reply = json.dumps({"resourceType": "Bundle", "type": "transaction-response"})
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_fhir_bundle_is_posted_after_a_server_error(
    reporter, study, tmp_path, fhir_validate, caplog
):
    from fhir.resources.R4B.bundle import Bundle

    server = _FhirServer()
    try:
        destination = FhirDestination(name="ehr", url=server.url)
        with running(reporter, tmp_path / "spool", destination) as node:
            store(node.port, [Path(study.filename)])
            wait_until(lambda: server.bodies, 60, "the Bundle")
            wait_until(lambda: node.spool.outbox_depth("ehr") == 0, 10, "an empty outbox")
    finally:
        server.stop()
    ((content_type, body),) = server.bodies
    assert content_type == "application/fhir+json" and server.posts == 2
    bundle = Bundle.model_validate_json(body)
    assert bundle.type == "transaction"
    path = tmp_path / "posted.json"
    path.write_bytes(body)
    result = fhir_validate([path])["posted"]
    assert result["schema"] == [] and result["fhirjs"]["errors"] == [], result
    assert [e["event"] for e in node_log(caplog)].count("destination-unreachable") == 1


def _certificates(folder: Path) -> dict[str, Path]:
    """A test CA and two certificates it signed (the node; a peer), made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)

    def run(command: str) -> None:
        subprocess.run([openssl, *command.split()], cwd=folder, check=True, capture_output=True)

    key = "-newkey rsa:2048 -nodes"
    run(f"req -x509 {key} -days 2 -subj /CN=ca -keyout ca.key -out ca.crt")
    for name in ("node", "peer"):
        run(f"req {key} -subj /CN={name} -keyout {name}.key -out {name}.csr")
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run(f"x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
            f"-extfile {name}.ext -out {name}.crt")  # fmt: skip
    return {p.stem + p.suffix: p for p in folder.iterdir()}


def test_tls_in_both_directions(reporter, study, tmp_path):
    files = _certificates(tmp_path / "pki")
    tls = TlsConfig(files["node.crt"], files["node.key"], files["ca.crt"])
    peer = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files["ca.crt"]))
    peer.load_cert_chain(str(files["peer.crt"]), str(files["peer.key"]))
    peer.verify_mode = ssl.CERT_REQUIRED
    pacs = RecordingPacs(ssl_context=peer)
    try:
        destination = pacs_destination(pacs, tls=True)
        with running(reporter, tmp_path / "spool", destination, tls=tls) as node:
            client = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(files["ca.crt"])
            )
            client.load_cert_chain(str(files["peer.crt"]), str(files["peer.key"]))
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(Verification)
            ae.add_requested_context(pydicom.uid.UID(study.SOPClassUID), ExplicitVRLittleEndian)
            assoc = ae.associate(
                "127.0.0.1", node.port, ae_title="ANAXREPORT", tls_args=(client, "127.0.0.1")
            )
            assert assoc.is_established
            assert assoc.send_c_store(study).Status == 0x0000
            assoc.release()
            plain = ae.associate("127.0.0.1", node.port, ae_title="ANAXREPORT")
            assert not plain.is_established  # no TLS, no association
            wait_until(lambda: len(pacs.received) == 2, 60, "results over TLS")
    finally:
        pacs.stop()
    assert {ds.StudyInstanceUID for ds in pacs.received} == {study.StudyInstanceUID}


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_stored_with_warning_counts_as_delivered_in_either_syntax(
    reporter, study, tmp_path, syntax
):
    # "coercion of data elements"; implicit VR only: the file cannot be streamed as it is
    pacs = RecordingPacs(status=0xB000, syntaxes=(syntax,))
    try:
        with running(reporter, tmp_path / "spool", pacs_destination(pacs)) as node:
            store(node.port, [Path(study.filename)])
            wait_until(lambda: len(pacs.received) == 2, 60, "both results")
            wait_until(lambda: node.spool.outbox_depth("pacs") == 0, 10, "an empty outbox")
            time.sleep(0.5)  # a retry would come now
    finally:
        pacs.stop()
    assert pacs.calls == 2 and not any(node.spool.dead("pacs").iterdir())
    assert {ds.file_meta.TransferSyntaxUID for ds in pacs.received} == {syntax}
    assert {ds.StudyInstanceUID for ds in pacs.received} == {study.StudyInstanceUID}


def test_serve_from_flags_answers_health_and_stops_on_sigterm(tmp_path):
    metrics_port = free_port()
    command = [sys.executable, "-m", "anaxreport", "serve", "--spool", str(tmp_path / "spool"),
               "--port", "0", "--ae-title", "AI_NODE", "--allow", "MODALITY",
               "--destination", "PACS@127.0.0.1:9", "--send", "sr",
               "--metrics-port", str(metrics_port)]  # fmt: skip
    node = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or '"listening"' not in lines[-1]:
            line = node.stderr.readline()
            assert line, f"serve exited: {''.join(lines)}"
            lines.append(line)
        listening = json.loads(lines[-1])
        assert listening["ae_title"] == "AI_NODE" and listening["port"] > 0
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", listening["port"], ae_title="AI_NODE")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        health = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/health", timeout=5).read())  # fmt: skip
        assert health["status"] == "ok" and health["outbox_depth"] == {"pacs": 0}
        node.send_signal(signal.SIGTERM)
        assert node.wait(60) == 0
        rest = node.stderr.read()
    finally:
        if node.poll() is None:
            node.kill()
    events = [json.loads(line)["event"] for line in [*lines, *rest.splitlines()]
              if line.startswith("{")]  # fmt: skip
    assert events[-1] == "stopped" and "echo" in events
    assert "no allowed calling AE" not in "".join(lines) + rest  # --allow was given


def test_a_port_in_use_is_one_line_and_exit_9(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        command = [sys.executable, "-m", "anaxreport", "serve", "--spool", str(tmp_path),
                   "--port", str(taken.getsockname()[1])]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 9
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
    assert len(errors) == 1 and "cannot listen on 127.0.0.1 port" in errors[0]


def test_waiting_inputs_share_model_passes_but_not_their_failures(
    reporter, tmp_path, caplog, monkeypatch
):
    """Inputs waiting together go through the model together (node.batch_size); one that was
    in flight when the node stopped goes alone, a truncated one fails alone, and one whose
    model pass raises fails alone: the others are reported."""
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, ("pacs",))
    inputs = []
    for index in range(5):
        source = tmp_path / f"in{index}.dcm"
        ds = phantom_study(SAMPLES[index % 4], source, 10 + index)
        if index == 2:
            ds.PixelData = ds.PixelData[:100]
            ds.save_as(source, enforce_file_format=True)
        inputs.append((ds, spool.accept(source.read_bytes(), ds.SOPInstanceUID)))
    spool.start_attempt(inputs[3][1])  # in flight when the node last stopped
    poison = str(inputs[4][0].SOPInstanceUID)
    passes: list[list[str]] = []
    predict_many = reporter.predict_many

    def recorded(radiographs):
        passes.append([r.identity.sop_instance_uid for r in radiographs])
        if poison in passes[-1]:
            raise RuntimeError("a model pass that fails on one input")
        return predict_many(radiographs)

    monkeypatch.setattr(reporter, "predict_many", recorded)
    pacs = RecordingPacs()
    try:
        with running(reporter, spool_dir, pacs_destination(pacs, outputs=("sr",)), batch_size=4):
            wait_until(lambda: len(list((spool_dir / "failed").glob("*.dcm"))) == 2, 60, "both")
            wait_until(lambda: len(pacs.received) == 3, 60, "three SRs")
    finally:
        pacs.stop()
    uids = [str(ds.SOPInstanceUID) for ds, _ in inputs]
    # the first claim: 0 and 1 together (2 is truncated, 3 alone); then 4, which raises
    assert passes == [[uids[0], uids[1]], [uids[3]], [uids[4]]]
    reported = {p.name for p in (spool_dir / "reported").glob("*.dcm")}
    assert reported == {inputs[i][1].path.name for i in (0, 1, 3)}
    reasons = {json.loads(n.read_text())["reason"] for n in (spool_dir / "failed").glob("*.json")}
    assert reasons == {"truncated", "internal-error"}
    evidence = [ds.CurrentRequestedProcedureEvidenceSequence[0] for ds in pacs.received]
    sources = {
        str(e.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for e in evidence
    }
    assert sources == {uids[i] for i in (0, 1, 3)}
    with pytest.raises(ValueError, match=r"node\.batch_size"):
        NodeConfig(spool=spool_dir, batch_size=0)


def test_an_input_that_cannot_be_decoded_is_kept_in_failed_with_its_reason(
    reporter, tmp_path, caplog
):
    broken = make_dataset(PatientName=SECRET_NAME)
    broken.PixelData = broken.PixelData[:100]  # far shorter than Rows × Columns × 2
    with running(reporter, tmp_path / "spool") as node:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(broken.SOPClassUID, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="ANAXREPORT")
        assert assoc.send_c_store(broken).Status == 0x0000  # received, then judged
        assoc.release()
        wait_until(lambda: node.snapshot()["counts"].get("failed") == 1, 30, "the failure")
    (note,) = (tmp_path / "spool" / "failed").glob("*.json")
    assert json.loads(note.read_text())["reason"] == "truncated"
    assert len(list((tmp_path / "spool" / "failed").glob("*.dcm"))) == 1
    (logged,) = [e for e in node_log(caplog) if e["event"] == "failed"]
    assert logged["reason"] == "truncated" and "Secret" not in json.dumps(logged)
