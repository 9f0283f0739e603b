"""The app's MONAI Label server on a free loopback port, for the integration test and the benchmark: started by
scripts/monailabel.sh in MONAI Label's own environment, and stopped (its whole process group, training subprocesses
included) whatever happens in between. Standard library only: it runs in the project's environment.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ServerError(RuntimeError):
    """The server could not be started; the message ends with the tail of its log."""


class Client:
    """HTTP client of a MONAI Label server; HTTP errors are returned as statuses, not raised."""

    def __init__(self, url: str, log: Path, timeout: float = 300) -> None:
        self.url, self.log, self.timeout = url, log, timeout

    def request(self, path: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
        """``(status, content type, body)`` of one request."""
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Content-Type", ""), err.read()

    def json(self, path: str, method: str = "GET", params: dict | None = None):
        """``(status, decoded JSON body)``; ``params`` is sent as the JSON body."""
        body = json.dumps(params).encode() if params is not None else (b"" if method == "POST" else None)
        status, _, content = self.request(path, method, body, {"Content-Type": "application/json"})
        return status, json.loads(content) if content else None

    def infer(self, model: str, study: str) -> tuple[int, dict | str, bytes | None]:
        """``(status, JSON result or error detail, label image file)`` of ``/infer/<model>?image=<study>``."""
        status, content_type, body = self.request(f"/infer/{model}?image={urllib.parse.quote(study)}&output=all", "POST", b"")
        if status != 200:
            return status, json.loads(body)["detail"], None
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        parts = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True) for part in message.iter_parts()}
        return status, json.loads(parts["params"]), parts["image"]

    def tail(self, n: int = 60) -> str:
        """The last ``n`` lines of the server's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_server(studies: Path, options: list[str], log: Path, start_timeout: float = 300) -> Iterator[Client]:
    """``scripts/monailabel.sh serve studies *options`` on 127.0.0.1, logging to ``log``; yields a client once
    ``/info/`` answers (:class:`ServerError` if the server exits or is silent for ``start_timeout`` seconds)."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "monailabel.sh"), "serve", str(studies), *options], stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "SEGX_MONAILABEL_PORT": str(port)},
        )
    client = Client(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise ServerError(f"the server exited with {process.returncode}:\n{client.tail()}")
            try:
                if client.request("/info/")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"the server did not answer /info/ within {start_timeout} s:\n{client.tail()}")
            time.sleep(1)
        yield client
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if process.poll() is None:
                os.killpg(process.pid, sig)
                try:
                    process.wait(wait)
                except subprocess.TimeoutExpired:
                    pass
