"""A real Orthanc for the DICOMweb tests: the server at SEGX_TEST_DICOMWEB_URL (CI's, from scripts/ci_orthanc.sh), or
one started by that script for the test session, and fresh ones for tests that need an empty or a filtering server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "ci_orthanc.sh"


def start_orthanc(folder: Path, lua: str | None = None) -> tuple[str, int]:
    """A throwaway Orthanc started by scripts/ci_orthanc.sh in ``folder`` (with the Lua script ``lua``): its DICOMweb
    URL and process id; the test fails, saying why, when it cannot be started."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `bash scripts/ci_orthanc.sh` as root once (it installs Debian's orthanc "
                    "and orthanc-dicomweb), or set SEGX_TEST_DICOMWEB_URL to a DICOMweb server's root")
    env = dict(os.environ)
    if lua is not None:
        (folder / "filter.lua").write_text(lua)
        env["ORTHANC_LUA"] = str(folder / "filter.lua")
    done = subprocess.run(["bash", str(SCRIPT), str(folder)], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode:
        pytest.fail(f"scripts/ci_orthanc.sh could not start Orthanc:\n{done.stderr[-3000:]}")
    return done.stdout.strip(), int((folder / "orthanc.pid").read_text())


def stop_orthanc(pid: int, wait: float = 20) -> None:
    """Stop the Orthanc of ``pid`` and wait until it has exited."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def dicomweb_url(tmp_path_factory):
    """SEGX_TEST_DICOMWEB_URL (CI's Orthanc), else an Orthanc started for this session."""
    if os.environ.get("SEGX_TEST_DICOMWEB_URL"):
        yield os.environ["SEGX_TEST_DICOMWEB_URL"]
        return
    url, pid = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield url
    stop_orthanc(pid)


@pytest.fixture
def own_orthanc(tmp_path):
    """Fresh Orthanc servers of the test's own, for a test that needs an empty or a filtering one: ``start(lua=None) -> url``."""
    pids = []

    def start(lua: str | None = None) -> str:
        folder = tmp_path / f"orthanc{len(pids)}"
        folder.mkdir()
        url, pid = start_orthanc(folder, lua)
        pids.append(pid)
        return url

    yield start
    for pid in pids:
        stop_orthanc(pid)
