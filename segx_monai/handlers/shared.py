"""Per-map work that several handlers of one iteration need, done by the first that asks and reused by the others.

:class:`~segx_monai.handlers.segx.SegXMaps`, :class:`~segx_monai.handlers.segx.SegUScores` and
:class:`~segx_monai.handlers.localization.LocalizationScores` all score the raw maps: each map's top fraction q and its
threshold levels (``segx_monai.core``) are found once per batch here, not once per handler and score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from ignite.engine import Engine

from segx_monai.core.maps import top_fraction_mask
from segx_monai.core.segu import normalized_levels
from segx_monai.core.segx import align_map_to_mask

STATE_ATTRIBUTE = "shared_map_work"  # on engine.state: (the output items it was made for, {key: (sources, value)})


def shared(engine: Engine, key: tuple, sources: Sequence[torch.Tensor], make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()``, computed once for ``key`` and the ``sources`` tensors it derives from (checked by identity, so a
    new batch's tensors never meet an old result); kept on ``engine.state`` until the iteration's output changes."""
    owner, memo = getattr(engine.state, STATE_ATTRIBUTE, (None, {}))
    if owner is not engine.state.output:
        owner, memo = engine.state.output, {}
        setattr(engine.state, STATE_ATTRIBUTE, (owner, memo))
    kept = memo.get(key)
    if kept is None or len(kept[0]) != len(sources) or any(a is not b for a, b in zip(kept[0], sources)):
        kept = memo[key] = (tuple(sources), make())
    return kept[1]


def shared_top(engine: Engine, items: Sequence[dict], key: str, like: torch.Tensor, q: float) -> torch.Tensor:
    """``top_fraction_mask`` at ``q`` of the items' maps ``key`` (stacked) on the grid of ``like`` ``(B, 1, *grid)``."""
    sources = [item[key] for item in items]
    return shared(engine, ("top", key, q, tuple(like.shape[2:])), sources,
                  lambda: top_fraction_mask(align_map_to_mask(torch.cat(sources), like), q))


def shared_levels(engine: Engine, items: Sequence[dict], key: str, like: torch.Tensor, n_thresholds: int) -> torch.Tensor:
    """``normalized_levels`` on ``n_thresholds`` of the items' maps ``key`` (stacked) on the grid of ``like``."""
    sources = [item[key] for item in items]
    return shared(engine, ("levels", key, n_thresholds, tuple(like.shape[2:])), sources,
                  lambda: normalized_levels(align_map_to_mask(torch.cat(sources), like), n_thresholds))
