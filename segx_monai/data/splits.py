"""Seeded train/validation/test splits by group (a lesion, a patient), stratified by label.

Written here rather than taken from scikit-learn because ``StratifiedGroupKFold`` only yields equal folds,
while the bundles need exact fractions and one split that every workflow reads back from the datalist.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence

FOLDS = ("training", "validation", "test")
# the default split settings, in one place: the indexers, the bundle configs and the synthetic skin set's generator
# (which places its artefacts by the split the bundle will draw) all take them from here
SPLIT_SEED = 0
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2


def split_by_group(
    groups: Sequence[Hashable],
    strata: Sequence[Hashable],
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> list[str]:
    """Assign every item to ``"training"``, ``"validation"`` or ``"test"`` so that items of one group share a fold.

    Groups are shuffled with ``seed`` inside each stratum; the first ones go to test, the next to validation.
    Counts are rounded on the running total over strata, so that the overall fractions hold even when every
    stratum is small (rounding each stratum alone would give a tiny data set no validation group at all). A group whose items disagree on their stratum is an error
    (for HAM10000: one ``lesion_id`` with two diagnoses), since it cannot be stratified honestly.
    """
    if len(groups) != len(strata):
        raise ValueError(f"groups ({len(groups)}) and strata ({len(strata)}) must have the same length.")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum < 1, got {val_fraction}, {test_fraction}.")
    stratum_of: dict[Hashable, Hashable] = {}
    for group, stratum in zip(groups, strata):
        if stratum_of.setdefault(group, stratum) != stratum:
            raise ValueError(f"group {group!r} has items in two strata ({stratum_of[group]!r} and {stratum!r}).")
    by_stratum: dict[Hashable, list[Hashable]] = defaultdict(list)
    for group, stratum in stratum_of.items():
        by_stratum[stratum].append(group)
    rng = random.Random(seed)
    fold_of: dict[Hashable, str] = {}
    seen = n_test_total = n_val_total = 0
    for stratum in sorted(by_stratum, key=str):
        members = sorted(by_stratum[stratum], key=str)
        rng.shuffle(members)
        seen += len(members)
        n_test = round(seen * test_fraction) - n_test_total
        n_val = round(seen * val_fraction) - n_val_total
        n_test_total, n_val_total = n_test_total + n_test, n_val_total + n_val
        for i, group in enumerate(members):
            fold_of[group] = FOLDS[2] if i < n_test else FOLDS[1] if i < n_test + n_val else FOLDS[0]
    return [fold_of[g] for g in groups]
