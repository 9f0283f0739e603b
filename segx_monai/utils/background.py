"""File writing off the critical path: calls run in order on one thread while the caller goes on computing; an error
in one is raised in the caller, never lost."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from ignite.engine import Engine, Events

_STOP = object()


class BackgroundWriter:
    """Runs the submitted calls in submission order on one daemon thread, started by the first ``submit``.

    At most ``max_pending`` calls wait: a caller faster than the disk blocks instead of filling memory. The first
    error stops the writing (the calls after it are dropped) and is raised by every later ``submit`` and ``flush``,
    and by ``close``, which then forgets it: the writer can serve another run.
    """

    def __init__(self, max_pending: int = 2, name: str = "background writer") -> None:
        if max_pending < 1:
            raise ValueError(f"{name}: max_pending must be at least 1, got {max_pending}")
        self.name = name
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, fn: Callable, *args, **kwargs) -> None:
        """Queue ``fn(*args, **kwargs)`` (waiting while ``max_pending`` calls wait); raises an earlier call's error."""
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put((fn, args, kwargs))

    def flush(self) -> None:
        """Wait until every submitted call has run; raise the first error among them."""
        self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Wait for the submitted calls, end the thread and raise the first error (once)."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def attach(self, engine: Engine) -> None:
        """Close when ``engine`` completes, and when it fails, then re-raising the engine's error (Ignite ends a run
        quietly when the handlers of ``EXCEPTION_RAISED`` do not raise)."""
        engine.add_event_handler(Events.COMPLETED, lambda _: self.close())
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._close_on_error)

    def _close_on_error(self, engine: Engine, error: BaseException) -> None:
        try:
            self.close()  # a write's own, other error becomes the engine error's context
        finally:
            raise error

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:
                    fn, args, kwargs = job
                    fn(*args, **kwargs)
            except BaseException as error:  # raised in the caller's thread by its next submit, flush or close
                self._error = error
            finally:
                job = fn = args = kwargs = None  # the call's data is freed now, not when the next call comes
                self._queue.task_done()
