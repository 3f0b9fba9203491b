"""The node's configuration: file + flags, validation with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from anaxreport.errors import ConfigurationError
from anaxreport.node import (
    DicomDestination,
    FhirDestination,
    RetryPolicy,
    StowDestination,
    load_node_config,
)
from anaxreport.resources import templates_dir

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_the_shipped_example_loads_with_every_table():
    config = load_node_config(templates_dir() / "node.toml")
    assert config.ae_title == "ANAXREPORT" and config.port == 11112
    assert config.allowed_calling_aes == ("PACS", "MODALITY")
    assert config.destinations == (
        DicomDestination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=4242),
    )
    assert config.delivery == RetryPolicy() and config.tls is None
    assert config.spool == Path("/var/spool/anaxreport")


def test_paths_are_relative_to_the_file_and_flags_win(tmp_path):
    path = _write(
        tmp_path,
        """
[node]
spool = "spool"
port = 104
[reporter]
rules = "my-rules.toml"
runtime = "torch"
[[destinations]]
type = "stow-rs"
url = "http://127.0.0.1:8042/dicom-web/"
outputs = ["sr"]
[[destinations]]
type = "fhir"
name = "ehr"
url = "https://fhir.example.org/fhir"
version = "R5"
""",
    )
    extra = DicomDestination.parse("PACS@pacs.example.org:11112", ("gsps",))
    config = load_node_config(path, port=0, ae_title="AI1", destinations=(extra,), host=None)
    assert config.spool == tmp_path / "spool" and config.rules == tmp_path / "my-rules.toml"
    assert config.runtime == "torch" and load_node_config(port=0, spool="s").runtime == "auto"
    assert (config.port, config.ae_title, config.host) == (0, "AI1", "127.0.0.1")
    stow, fhir, pacs = config.destinations
    assert stow == StowDestination(name="stow-rs-0", url="http://127.0.0.1:8042/dicom-web",
                                   outputs=("sr",))  # fmt: skip
    assert fhir == FhirDestination(name="ehr", url="https://fhir.example.org/fhir", version="R5")
    assert fhir.outputs == ("fhir-R5",)
    assert (pacs.name, pacs.ae_title, pacs.port) == ("pacs", "PACS", 11112)
    assert pacs.host == "pacs.example.org" and pacs.outputs == ("gsps",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node]\nspool='s'\n[nodes]\n", "unknown table(s) ['nodes']"),
        ("[node]\nspool='s'\nport_number=1\n", "node: unknown key(s) ['port_number']"),
        ("[node]\nspool='s'\nae_title='WAY-TOO-LONG-AE-TITLE'\n", "node.ae_title"),
        ("[node]\nspool='s'\nae_title='BACK\\\\SLASH'\n", "node.ae_title"),
        ("[node]\nspool='s'\nport=70000\n", "node.port"),
        ("[node]\nspool='s'\nallowed_calling_aes='PACS'\n", "node.allowed_calling_aes"),
        ("[node]\nport=104\n", "node.spool"),
        ("[node]\nspool='s'\nretain_reported='no'\n", "node.retain_reported"),
        ("[node]\nspool='s'\n[[destinations]]\ntype='fhir'\nname='..'\nurl='http://x'\n",
         "destination '..'.name"),
        ("[node]\nspool='s'\n[[destinations]]\ntype='ftp'\n", "destinations[0].type"),
        ("[node]\nspool='s'\n[[destinations]]\ntype='dimse'\nname='p'\nae_title='P'\n"
         "host='h'\nport=1\noutputs=['pdf']\n", "unknown output(s) ['pdf']"),
        ("[node]\nspool='s'\n[[destinations]]\ntype='dimse'\nname='p'\nae_title='P'\n",
         "destinations[0]"),
        ("[node]\nspool='s'\n[[destinations]]\ntype='stow-rs'\nurl='ftp://x'\n", ".url"),
        ("[node]\nspool='s'\n[[destinations]]\ntype='fhir'\nname='a'\nurl='http://x'\n"
         "[[destinations]]\ntype='fhir'\nname='a'\nurl='http://y'\n", "repeated: ['a']"),
        ("[node]\nspool='s'\n[[destinations]]\ntype='dimse'\nname='p'\nae_title='P'\n"
         "host='h'\nport=1\ntls=true\n", "no [tls] table"),
        ("[node]\nspool='s'\n[tls]\ncertificate='none.crt'\nprivate_key='none.key'\n",
         "tls.certificate: no such file"),
        ("[node]\nspool='s'\n[delivery]\nmax_attempts=0\n", "delivery.max_attempts"),
        ("[node]\nspool='s'\n[delivery]\ninitial_s=10\nmax_s=1\n", "delivery.max_s"),
        ("[node]\nspool='s'\n[metrics]\nport=-1\n", "metrics.port"),
        ("[node]\nspool='s'\n[reporter]\nruntime='tensorrt'\n", "reporter.runtime"),
        ("[node\n", "not a valid TOML node configuration"),
    ],
)  # fmt: skip
def test_bad_configuration_names_the_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigurationError) as raised:
        load_node_config(path)
    assert message in str(raised.value) and str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_destination_flag_syntax():
    assert DicomDestination.parse("ORTHANC@127.0.0.1:4242").port == 4242
    for bad in ("ORTHANC", "ORTHANC@host", "ORTHANC@host:port", "@host:1"):
        with pytest.raises(ConfigurationError, match=r"--destination|ae_title"):
            DicomDestination.parse(bad)


def test_backoff_doubles_up_to_the_cap():
    policy = RetryPolicy(initial_s=1, max_s=10)
    assert [policy.delay(n, jitter=1.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.delay(3, jitter=0.0) == 2.0  # jitter takes up to half off


def test_serve_with_a_bad_configuration_exits_9_in_one_line(tmp_path):
    path = _write(tmp_path, "[node]\nspool='s'\nport='eleven'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "anaxreport", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 9
    assert proc.stderr.strip().splitlines() == [
        f"anaxreport: {path}: node configuration: node.port: must be an integer port in "
        "[0, 65535], got 'eleven'"
    ]
