"""Samples whose files cannot be loaded or decoded: an error naming the file, or, with ``skip_bad_samples``, skipped,
logged and listed in the run's outputs (``skipped.csv``).

Every dataset of the bundles is a :class:`CheckedDataset`. With skipping on, each sample's deterministic transforms
(``LoadImaged`` and what follows up to the first random transform) run once when the dataset is made, the samples
that fail are dropped and recorded in ``dataset.skipped``, and the run then sees only samples that loaded: batches,
epoch lengths and distributed shards are those of the good samples (dropping them when batching instead would leave
empty batches and epochs shorter than the length the engine takes from the loader). The check runs in threads of the main process,
as MONAI's cache is filled, so records made in parallel are all in one list. For a cached dataset the check is the
caching itself; an uncached one reads each sample once more. MONAI has no per-sample error handling in its datasets
(a failing transform stops ``CacheDataset`` and the ``DataLoader``), hence these few lines.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.pool import ThreadPool
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine, Events
from monai.data import CacheDataset
from monai.transforms import Compose, MapTransform

from segx_monai.data.datalist import DatasetError

__all__ = ["CheckedDataset", "SampleLoadError", "SkipBadSamples", "SkippedSamplesWriter", "SKIPPED_KEY"]

logger = logging.getLogger(__name__)

SKIPPED_KEY = "skipped_sample"
SKIPPED_COLUMNS = ("fold", "file", "cause")


class SampleLoadError(DatasetError):
    """A sample's file could not be loaded or decoded; the message names the file and the cause."""


def _chain(err: BaseException | None) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or during, outermost first."""
    chain = []
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _cause(err: BaseException) -> BaseException:
    """The error a transform raised, under MONAI's 'applying transform ...' wrappers."""
    return next((e for e in _chain(err) if not str(e).startswith("applying transform")), err)


def _failed_key(err: BaseException) -> str | None:
    """The key a MONAI dictionary transform was reading when it failed: the loop variable ``key`` of its ``__call__``
    in the traceback (a decoder's error, e.g. PIL's 'image file is truncated', rarely names the file)."""
    keys = [
        frame.f_locals["key"]
        for e in _chain(err)
        for frame, _ in traceback.walk_tb(e.__traceback__)
        if isinstance(frame.f_locals.get("self"), MapTransform) and isinstance(frame.f_locals.get("key"), str)
    ]
    return keys[-1] if keys else None


def _failed_file(item: Mapping, err: BaseException) -> str:
    """The file of ``item`` that failed (an image or its mask): the one the error names, else the one of the key
    being read, else the sample's image."""
    text = "\n".join(map(str, _chain(err)))
    named = [value for value in item.values() if isinstance(value, str) and value in text and os.path.isfile(value)]
    key = _failed_key(err)
    return named[0] if named else str(item[key] if isinstance(item.get(key), str) else item.get("image", "?"))


class SkipBadSamples(Compose):
    """MONAI's ``Compose`` that names the sample's file when a transform fails on it and, with ``skip``, returns a
    marker ``{SKIPPED_KEY: {"file", "cause"}}`` instead, which later calls pass through (``CacheDataset`` applies
    the transforms in two parts: the cached deterministic ones, then the random ones)."""

    def __init__(self, transforms: Sequence[Callable] | Callable, skip: bool = False) -> None:
        super().__init__(Compose(transforms).flatten().transforms)
        self.skip = skip

    def __call__(self, input_, *args, **kwargs):
        if isinstance(input_, Mapping) and SKIPPED_KEY in input_:
            return input_
        try:
            return super().__call__(input_, *args, **kwargs)
        except Exception as err:
            if not isinstance(input_, Mapping):
                raise
            file, cause = _failed_file(input_, err), _cause(err)
            cause = str(cause).removeprefix(f"{file}: ") or type(cause).__name__
            if not self.skip:
                raise SampleLoadError(
                    f"{file}: could not load this sample ({cause}); fix or remove the file, or set "
                    "skip_bad_samples to True to skip such samples"
                ) from err
            logger.warning("Skipping %s: %s", file, cause)
            return {SKIPPED_KEY: {"file": file, "cause": cause}}


class CheckedDataset(CacheDataset):
    """MONAI's ``CacheDataset`` (nothing cached with the default ``cache_rate=0``: MONAI's ``Dataset``) whose
    samples that fail to load raise a :class:`SampleLoadError` naming the file, or, with ``skip_bad``, are dropped
    when the dataset is made and listed in ``skipped`` (dicts ``file``, ``cause``).

    ``data`` is the list left after dropping; ``num_workers`` threads load the samples, as for MONAI's cache.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Sequence[Callable] | Callable,
        skip_bad: bool = False,
        cache_rate: float = 0.0,
        num_workers: int | None = 1,
        **kwargs,
    ) -> None:
        transform = SkipBadSamples(transform, skip=skip_bad)
        super().__init__(data, transform, cache_rate=cache_rate, num_workers=num_workers, **kwargs)
        self.skipped: list[dict] = self._drop_bad_samples() if skip_bad else []
        transform.skip = False  # every sample left has loaded once: a failure from now on stops the run

    def _drop_bad_samples(self) -> list[dict]:
        """Load the samples not in the cache once (the cached ones are loaded), drop those that failed, return them."""
        n = len(self.data)
        with ThreadPool(max(1, self.num_workers or 1)) as pool:
            uncached = pool.imap(self._load_cache_item, range(self.cache_num, n))
            loaded = enumerate(itertools.chain(self._cache, uncached))  # one uncached sample in memory at a time
            failed = {i: item[SKIPPED_KEY] for i, item in loaded if isinstance(item, Mapping) and SKIPPED_KEY in item}
        if len(failed) == n > 0:
            first = next(iter(failed.values()))
            raise SampleLoadError(f"none of the {n} samples could be loaded; the first: {first['file']}: {first['cause']}")
        if failed:
            self.data = [item for i, item in enumerate(self.data) if i not in failed]
            self._cache = [item for i, item in enumerate(self._cache) if i not in failed]
            self.cache_num = len(self._cache)
            logger.warning("Skipped %d of %d samples that could not be loaded.", len(failed), n)
        return list(failed.values())


class SkippedSamplesWriter:
    """Writes ``skipped.csv`` (fold, file, cause; a header only when nothing was skipped) for the datasets of a run
    when its engine starts, on the main rank only (every rank makes the same datasets)."""

    def __init__(self, path: str | Path, datasets: Mapping[str, CheckedDataset]) -> None:
        self.path, self.datasets = Path(path), dict(datasets)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if idist.get_rank() != 0:
            return
        rows = [{"fold": fold, **record} for fold, dataset in self.datasets.items() for record in dataset.skipped]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SKIPPED_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        if rows:
            logger.warning("%d samples skipped, listed with their causes in %s", len(rows), self.path)
