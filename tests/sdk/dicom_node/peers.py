"""Real DICOM programs on loopback for the node's integration tests: Orthanc as the PACS, dcmtk's storescu and
echoscu as modalities, and ``medssl serve-dicom`` itself as a subprocess."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

#: Orthanc's Lua hook appends the SOPInstanceUID of every instance it stores, re-stores (overwrites) included, so a
#: second C-STORE of a SEG with the same UID shows up as a second line even though Orthanc keeps one instance.
_STORED_LOG_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  local stream = io.open("{log}", "a")
  stream:write(tags["SOPInstanceUID"] .. "\\n")
  stream:close()
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_program(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    assert path is not None, f"{name} is not installed: `apt-get install orthanc dcmtk` (CI installs them)"
    return path


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll ``condition()`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Orthanc:
    """An Orthanc started on free loopback ports with its storage in ``folder``; stop() ends it."""

    ae_title = "ORTHANC"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dicom_port, self.http_port = free_port(), free_port()
        self.stored_log = folder / "stored.log"
        (folder / "stored.lua").write_text(_STORED_LOG_LUA.format(log=self.stored_log))
        config = {
            "Name": "medssl-test-pacs",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "OverwriteInstances": True,
            "LuaScripts": [str(folder / "stored.lua")],
            "Plugins": [],
            "SaveJobs": False,
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")  # closed in stop()
        command = [require_program("Orthanc"), str(folder / "orthanc.json")]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log)
        try:
            wait_until(self._answers, 60, "Orthanc's REST API")
        except BaseException:  # the fixture never yields, so its teardown would not stop a hung Orthanc
            self.stop()
            raise

    def _answers(self) -> bool:
        assert self.process.poll() is None, f"Orthanc exited: {(self.folder / 'orthanc.log').read_text(errors='replace')[-2000:]}"
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: object) -> object:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def seg_instances(self, study_uid: str) -> list[str]:
        """Orthanc ids of the SEG instances stored in the study."""
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SEG"}}
        return list(self.post("/tools/find", query))

    def instance(self, orthanc_id: str) -> pydicom.Dataset:
        """An instance's file as Orthanc stores it, read back with pydicom."""
        url = f"http://127.0.0.1:{self.http_port}/instances/{orthanc_id}/file"
        with urllib.request.urlopen(url, timeout=10) as response:
            return pydicom.dcmread(io.BytesIO(response.read()))

    def store_count(self, sop_instance_uid: str) -> int:
        """How many times an instance with this UID was stored (C-STOREs accepted, overwrites included)."""
        if not self.stored_log.exists():
            return 0
        return self.stored_log.read_text().split().count(sop_instance_uid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class NodeProcess:
    """``medssl serve-dicom --config CONFIG`` as a subprocess; its stderr (the log) goes to ``log_path``."""

    def __init__(self, config_path: Path, log_path: Path, port: int) -> None:
        self.config_path, self.log_path, self.port = config_path, log_path, port
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> NodeProcess:
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "medssl_sdk.cli", "serve-dicom", "--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=environment)
        starts = self.log().count(" ready: ")
        wait_until(lambda: self._alive() and self.log().count(" ready: ") > starts, timeout_s, "the node to be ready")
        return self

    def _alive(self) -> bool:
        assert self.process is not None and self.process.poll() is None, f"the node exited:\n{self.log()[-3000:]}"
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a power cut of the process."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.terminate()
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def storescu(
    port: int, *folders: Path, ae_title: str = "MEDSSL", background: bool = False
) -> subprocess.Popen | subprocess.CompletedProcess:
    """Send every file under ``folders`` to ``127.0.0.1:port`` with dcmtk's storescu (one association)."""
    command = [require_program("storescu"), "-aet", "MODALITY", "-aec", ae_title, "-nh", "+sd", "+r", "127.0.0.1", str(port)]
    command += [str(folder) for folder in folders]
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def associate(port: int, *sop_classes: str) -> Association:
    """An association from AE MODALITY to MEDSSL at ``127.0.0.1:port`` proposing ``sop_classes`` (Explicit VR LE)."""
    ae = AE(ae_title="MODALITY")
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title="MEDSSL")


def echoscu(port: int, ae_title: str = "MEDSSL") -> subprocess.CompletedProcess:
    """dcmtk's C-ECHO to ``127.0.0.1:port``."""
    command = [require_program("echoscu"), "-aet", "MODALITY", "-aec", ae_title, "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)
