"""One run at a time per output: a lock file beside the output naming its holder (PID, host, command line).

Two trainings on one bundle output would delete each other's resume points and overwrite each other's best model;
the second run is refused, naming the first. A lock whose holder died (killed, crashed) is reported and taken over.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import socket
import sys
import time
from pathlib import Path

import ignite.distributed as idist

logger = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another live run holds the lock of this output."""


def command_line(pid: int) -> list[str] | None:
    """The command line of process ``pid`` as the system records it (Linux ``/proc``), None where unknown."""
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    except OSError:
        return None


def process_running(pid: int, argv: list[str] | None = None) -> bool:
    """Whether process ``pid`` of this host is running (not a zombie) and, where the system says, runs ``argv``
    (a PID reused by another program after the holder died does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):  # no /proc (macOS): the PID's existence is all there is to go by
        return True
    running = command_line(pid)
    return argv is None or running is None or running == argv


def read_holder(path: Path) -> dict | None:
    """The holder recorded in lock file ``path``; None when there is none, ``{}`` when it is empty or unreadable."""
    try:
        return json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


class RunLock:
    """Lock file ``path``, created atomically (``O_CREAT | O_EXCL``) with its holder as JSON: pid, host, argv,
    command, started, token. As a context manager it is held while the block runs and released after, also on error.

    A second run is refused with :class:`RunLockedError` naming the holder. A lock whose holder is not running on
    this host is stale: reported, and taken over. In a distributed run, rank 0 takes it for all (the rank is read when
    taking it, after the process group is set up).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.token: str | None = None

    def _create(self) -> bool:
        """Write this process's lock file if none exists (atomically); whether it did."""
        self.token = secrets.token_hex(8)
        argv = command_line(os.getpid()) or [sys.executable, *sys.argv]
        record = {"pid": os.getpid(), "host": socket.gethostname(), "argv": argv, "command": shlex.join(argv),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "token": self.token}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        return True

    def _is_stale(self, holder: dict) -> bool:
        if not holder:  # a holder killed between creating and writing the file, or one still writing it
            try:
                return time.time() - self.path.stat().st_mtime > 10
            except FileNotFoundError:
                return True
        return holder.get("host") == socket.gethostname() and not process_running(int(holder["pid"]), holder.get("argv"))

    def acquire(self) -> None:
        """Take the lock on rank 0. In a distributed run every rank raises rank 0's refusal, rather than waiting for
        rank 0 at the next collective call until the backend times out."""
        refusal = None
        if idist.get_rank() == 0:
            try:
                self._acquire()
            except RunLockedError as e:
                refusal = str(e)
        if idist.get_world_size() > 1:
            outcome = idist.broadcast("refused " + refusal if refusal else "taken", src=0)  # never empty: Ignite pads text
            refusal = outcome.removeprefix("refused ") if outcome.startswith("refused ") else None
        if refusal:
            raise RunLockedError(refusal)

    def _acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                return
            holder = read_holder(self.path)
            if holder is None:  # released in the meantime
                continue
            if not self._is_stale(holder):
                raise RunLockedError(
                    f"{self.path}: another run writes this output: PID {holder.get('pid')} on {holder.get('host')}, "
                    f"started {holder.get('started')}: {holder.get('command')}. Wait for it to end, or use another output "
                    f"folder; if that process is not running, delete {self.path}."
                )
            logger.warning("Taking over %s, left by PID %s on %s, which is no longer running (%s).", self.path,
                           holder.get("pid"), holder.get("host"), holder.get("command"))
            # moved aside rather than deleted, so that of two runs taking it over at once only one removes it
            aside = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue
            if read_holder(aside) != holder:  # another run's fresh lock was moved: put it back unless a third one took its place
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
            aside.unlink()
        raise RunLockedError(f"{self.path}: could not take the lock (other runs kept taking it).")

    def release(self) -> None:
        """Delete the lock file if it is still this run's."""
        if self.token is not None and (read_holder(self.path) or {}).get("token") == self.token:
            self.path.unlink()
        self.token = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
