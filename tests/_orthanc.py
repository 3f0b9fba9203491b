"""A real Orthanc (Debian's package) on loopback, for the node tests.

Started as a plain process with a generated configuration (DESIGN.md §8): its own storage and
index folders, free ports, no authentication, the DICOMweb plugin when Debian's
orthanc-dicomweb is installed, and anaxreport's node registered as a modality.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORTHANC_AE = "ORTHANC"
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_binary() -> str | None:
    """Debian installs Orthanc in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


def dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        for candidate in sorted(folder.glob("libOrthancDicomWeb.so*")):
            return candidate
    return None


@dataclass
class Orthanc:
    """A running Orthanc: its DICOM port and AE title, and its REST API."""

    process: subprocess.Popen[bytes]
    dicom_port: int
    http_port: int
    folder: Path

    ae_title: str = ORTHANC_AE

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def find(self, level: str, **query: str) -> list[dict[str, Any]]:
        """Resources at ``level`` whose main DICOM tags match ``query``, expanded."""
        return self.post("/tools/find", {"Level": level, "Query": query, "Expand": True})

    def modalities(self, study_uid: str) -> Counter[str]:
        """How many instances of each modality (CR, SR, PR, ...) the study holds."""
        counts: Counter[str] = Counter()
        for series in self.find("Series", StudyInstanceUID=study_uid):
            counts[series["MainDicomTags"]["Modality"]] += len(series["Instances"])
        return counts

    def instances_of(self, modality: str) -> list[dict[str, Any]]:
        """Every instance in a series of ``modality``, each as {study, patient_id, sop}."""
        found = []
        for series in self.find("Series", Modality=modality):
            study = self.get(f"/studies/{series['ParentStudy']}")
            for instance in series["Instances"]:
                tags = self.get(f"/instances/{instance}/simplified-tags")
                found.append({
                    "study": study["MainDicomTags"]["StudyInstanceUID"],
                    "patient_id": study["PatientMainDicomTags"].get("PatientID", ""),
                    "sop_class": tags["SOPClassUID"],
                    "sop": tags["SOPInstanceUID"],
                })  # fmt: skip
        return found

    def count(self, modality: str) -> int:
        return sum(len(s["Instances"]) for s in self.find("Series", Modality=modality))

    def clear(self) -> None:
        for patient in self.get("/patients"):
            request = urllib.request.Request(f"{self.url}/patients/{patient}", method="DELETE")
            urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_orthanc(folder: Path, modalities: dict[str, tuple[str, str, int]]) -> Orthanc:
    """Start ``Orthanc`` with a configuration in ``folder``; wait until its REST API answers."""
    binary = orthanc_binary()
    if binary is None:
        raise FileNotFoundError("Orthanc (Debian package orthanc) is not installed")
    dicom_port, http_port = free_port(), free_port()
    config: dict[str, Any] = {
        "Name": "anaxreport-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "StableAge": 1,
    }
    plugin = dicomweb_plugin()
    if plugin is not None:
        config["Plugins"] = [str(plugin)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 (lives as long as the process)
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=log)
    orthanc = Orthanc(process, dicom_port, http_port, folder)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            orthanc.get("/system")
            return orthanc
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    orthanc.stop()
    raise RuntimeError("Orthanc did not answer within 60 s")
