"""Files written off the critical path are still all written, in order and whole, before a run ends, and a failed
write fails the run: the background writer, and the explanation saver that uses it."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events

from segx_monai.handlers.contract import OutputKeys
from segx_monai.handlers.savers import ExplanationSaver
from segx_monai.utils.background import BackgroundWriter


def _append(path: Path, text: str, wait: threading.Event | None = None) -> None:
    if wait is not None:
        wait.wait()
    with open(path, "a") as f:
        f.write(text)


def _fail(message: str) -> None:
    raise OSError(message)


def test_calls_run_in_order_and_close_waits_for_them(tmp_path):
    writer, path, go = BackgroundWriter(max_pending=2), tmp_path / "log.txt", threading.Event()
    writer.submit(_append, path, "a", go)
    writer.submit(_append, path, "b")
    assert not path.exists()  # the first call waits for `go`: nothing written yet, and the caller went on
    go.set()
    writer.close()
    assert path.read_text() == "ab"
    writer.submit(_append, path, "c")  # a closed writer serves again
    writer.flush()
    assert path.read_text() == "abc"
    writer.close()


def test_an_error_is_raised_by_every_later_call_and_drops_the_writes_after_it(tmp_path):
    writer, path, go = BackgroundWriter(max_pending=3), tmp_path / "log.txt", threading.Event()
    writer.submit(_append, path, "a", go)
    writer.submit(_fail, "disk full")
    writer.submit(_append, path, "b")
    go.set()
    with pytest.raises(OSError, match="disk full"):
        writer.flush()
    with pytest.raises(OSError, match="disk full"):
        writer.submit(_append, path, "c")
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert path.read_text() == "a"
    writer.close()  # raised once by close: the next run starts clean


def _engine_writing(writer: BackgroundWriter, path: Path, go: threading.Event, fail_at: int | None = None) -> Engine:
    """An engine that queues one write of its batch per iteration, each waiting for ``go``, which is set when the
    engine completes, before the writer is closed; the write of iteration ``fail_at`` fails."""

    def step(engine, batch):
        if engine.state.iteration == fail_at:
            writer.submit(_fail, "disk full")
        else:
            writer.submit(_append, path, str(batch), go)

    engine = Engine(step)
    engine.add_event_handler(Events.COMPLETED, lambda _: go.set())
    writer.attach(engine)
    return engine


def test_an_engine_returns_once_its_writes_are_done(tmp_path):
    writer, path, go = BackgroundWriter(max_pending=3), tmp_path / "log.txt", threading.Event()
    _engine_writing(writer, path, go).run([1, 2, 3], max_epochs=1)
    assert path.read_text() == "123"


def test_a_failed_write_fails_the_engine_run(tmp_path):
    writer, path, go = BackgroundWriter(max_pending=3), tmp_path / "log.txt", threading.Event()
    with pytest.raises(OSError, match="disk full"):
        _engine_writing(writer, path, go, fail_at=3).run([1, 2, 3], max_epochs=1)  # the last write: raised at COMPLETED
    assert path.read_text() == "12"


def test_an_engine_error_waits_for_the_writes_and_is_raised_as_it_is(tmp_path):
    writer, path, go = BackgroundWriter(max_pending=3), tmp_path / "log.txt", threading.Event()
    engine = _engine_writing(writer, path, go)

    @engine.on(Events.ITERATION_COMPLETED(once=2))
    def broken(engine):
        go.set()
        raise ValueError("a handler's own error")

    with pytest.raises(ValueError, match="a handler's own error"):
        engine.run([1, 2, 3], max_epochs=1)
    assert path.read_text() == "12"


# ---- the explanation saver: attached, it writes in the background

SIZE = 8


def _batches(n_batches: int) -> list[tuple[list[dict], list[dict]]]:
    """(batch items, output items) of two pairs each, with distinct maps."""
    generator, batches = torch.Generator().manual_seed(0), []
    for b in range(n_batches):
        outputs = []
        for _ in range(2):
            heat = torch.rand(1, 1, SIZE, SIZE, generator=generator)
            outputs.append({OutputKeys.IMAGE: torch.rand(1, SIZE, SIZE, generator=generator), OutputKeys.MAP: heat,
                            OutputKeys.SEGX_MAP: heat * (heat > 0.5), OutputKeys.SEGX_BINARY: heat > 0.5,
                            OutputKeys.REGION_MASK: heat > 0.3, OutputKeys.ROWS: [{}]})
        batches.append(([{"image_id": f"b{b}_{i}"} for i in range(2)], outputs))
    return batches


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_saver(saver: ExplanationSaver, batches) -> Engine:
    def step(engine, batch):
        engine.state.batch, output = batch
        return output

    engine = Engine(step)
    saver.attach(engine)
    engine.run(batches, max_epochs=1)
    return engine


def test_the_saver_attached_writes_every_file_whole_before_the_run_ends(tmp_path):
    batches = _batches(3)
    for batch, output in batches:  # written in place, one batch at a time
        ExplanationSaver(tmp_path / "direct", mean=[0.0], std=[1.0])(SimpleNamespace(state=SimpleNamespace(batch=batch, output=output)))
    saver = ExplanationSaver(tmp_path / "background", mean=[0.0], std=[1.0])
    _run_saver(saver, batches)
    direct, background = _files(tmp_path / "direct"), _files(tmp_path / "background")
    assert len(direct) == 6 * 7  # 3 batches x 2 pairs x (3 maps x 2 formats + 1 overlay)
    assert background == direct  # the same bytes, none left half-written or temporary


def test_a_failed_explanation_write_fails_the_run(tmp_path):
    (tmp_path / "out").write_text("a file where the output folder should be")
    with pytest.raises(OSError, match="out"):
        _run_saver(ExplanationSaver(tmp_path / "out", mean=[0.0], std=[1.0]), _batches(2))
