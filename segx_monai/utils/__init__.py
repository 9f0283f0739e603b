"""Run safety: one run at a time per output (:mod:`.lock`), outputs swapped into place when complete (:mod:`.staging`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack, AbstractContextManager


def run_within(contexts: Sequence[AbstractContextManager], *steps: Callable[[], object]) -> None:
    """Call ``steps`` in order inside ``contexts`` (entered in order, exited in reverse, also on error): a bundle
    workflow's ``run`` expression, e.g. ``$segx_monai.utils.run_within([@run_lock], @train#trainer.run)``."""
    with ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        for step in steps:
            step()
