"""The synthetic dermoscopy set: real HAM10000 layout, determinism, class and split coverage, planted shortcut."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segx_monai.data.splits import FOLDS, split_by_group
from segx_monai.data.synthetic_derm import (
    ARTEFACTS,
    CLASS_ARTEFACT,
    CLASSES,
    DX_TYPES,
    IMAGE_FOLDERS,
    LOCALIZATIONS,
    MASK_FOLDER,
    METADATA_COLUMNS,
    METADATA_FILE,
    generate_ham_like,
    main,
    plan_ham_like,
    render_ham_like,
)

N_IMAGES, SIZE = 40, (64, 48)  # too few for a validation split that holds 7 classes: training and test do


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_ham_like(tmp_path_factory.mktemp("ham") / "synth", n_images=N_IMAGES, image_size=SIZE)


@pytest.fixture(scope="module")
def rows(root) -> list[dict]:
    with open(root / METADATA_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_layout_is_the_real_one(root, rows):
    assert sorted(p.name for p in root.iterdir()) == sorted([METADATA_FILE, *IMAGE_FOLDERS, MASK_FOLDER])
    with open(root / METADATA_FILE, newline="") as handle:
        assert next(csv.reader(handle)) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "artefact"]
    assert [*METADATA_COLUMNS, "artefact"] == list(rows[0])  # the real columns, then each image's artefact
    ids = [row["image_id"] for row in rows]
    assert len(rows) == N_IMAGES == len(set(ids))
    in_parts = [{p.stem for p in (root / folder).iterdir()} for folder in IMAGE_FOLDERS]
    assert in_parts[0] | in_parts[1] == set(ids) and not in_parts[0] & in_parts[1]
    assert abs(len(in_parts[0]) - len(in_parts[1])) <= 1
    assert max(in_parts[0]) < min(in_parts[1])  # like the real release: part 1 holds the lower ids
    assert {p.name for p in (root / MASK_FOLDER).iterdir()} == {f"{i}_segmentation.png" for i in ids}
    for image_id in ids:
        folder = IMAGE_FOLDERS[image_id in in_parts[1]]
        with Image.open(root / folder / f"{image_id}.jpg") as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", SIZE)
        with Image.open(root / MASK_FOLDER / f"{image_id}_segmentation.png") as mask:
            assert (mask.format, mask.mode, mask.size) == ("PNG", "L", SIZE)
            assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_metadata_values_look_real(rows):
    for row in rows:
        assert re.fullmatch(r"HAM_\d{7}", row["lesion_id"]) and re.fullmatch(r"ISIC_\d{7}", row["image_id"])
        assert row["dx_type"] in DX_TYPES[row["dx"]][0]
        assert row["sex"] in ("male", "female", "unknown") and row["localization"] in LOCALIZATIONS
        assert row["age"] == "" or (float(row["age"]) % 5 == 0 and 0 <= float(row["age"]) <= 85)


def test_same_arguments_give_identical_files(root, tmp_path):
    again = generate_ham_like(tmp_path / "again", n_images=N_IMAGES, image_size=SIZE)
    assert _digests(again) == _digests(root)
    other = generate_ham_like(tmp_path / "other", n_images=N_IMAGES, image_size=SIZE, seed=1)
    assert _digests(other) != _digests(root)


def test_lesions_repeat_with_one_diagnosis_and_every_class_is_in_training_and_test(rows):
    by_lesion = defaultdict(list)
    for row in rows:
        by_lesion[row["lesion_id"]].append(row)
    assert max(len(images) for images in by_lesion.values()) > 1
    for images in by_lesion.values():  # one lesion is one patient and one diagnosis
        assert len({(r["dx"], r["dx_type"], r["age"], r["sex"], r["localization"]) for r in images}) == 1
    folds = split_by_group([r["lesion_id"] for r in rows], [r["dx"] for r in rows])
    present = {(row["dx"], fold) for row, fold in zip(rows, folds)}
    assert {(dx, fold) for dx in CLASSES for fold in ("training", "test")} <= present


def test_plan_matches_the_written_metadata_and_the_split(rows):
    plan = plan_ham_like(n_images=N_IMAGES)
    assert [(p.lesion_id, p.image_id, p.dx) for p in plan] == [(r["lesion_id"], r["image_id"], r["dx"]) for r in rows]
    assert [p.fold for p in plan] == split_by_group([r["lesion_id"] for r in rows], [r["dx"] for r in rows])


def test_masks_hold_one_lesion_of_sane_size(root, rows):
    for row in rows:
        mask = np.asarray(Image.open(root / MASK_FOLDER / f"{row['image_id']}_segmentation.png")) > 0
        assert 0.01 < mask.mean() < 0.6
        assert not (mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any())


def test_views_of_one_lesion_differ_but_keep_its_size():
    plan = plan_ham_like(n_images=N_IMAGES)
    lesion = Counter(p.lesion_id for p in plan).most_common(1)[0][0]
    views = [render_ham_like(p, SIZE) for p in plan if p.lesion_id == lesion]
    assert not np.array_equal(views[0][0], views[1][0])
    areas = [mask.mean() for _, mask in views]
    assert max(areas) / min(areas) < 1.6


def test_artefacts_follow_the_class_outside_test_and_not_in_test():
    plan = plan_ham_like(n_images=3000, spurious_strength=0.9)
    for folds, low, high in ((("training", "validation"), 0.87, 0.93), (("test",), 1 / 7 - 0.05, 1 / 7 + 0.05)):
        hits = [p.artefact == CLASS_ARTEFACT[p.dx] for p in plan if p.fold in folds]
        assert low < np.mean(hits) < high, folds
    test_artefacts = Counter(p.artefact for p in plan if p.fold == "test")
    assert set(test_artefacts) == set(ARTEFACTS) and min(test_artefacts.values()) > 0.6 * max(test_artefacts.values())
    no_shortcut = plan_ham_like(n_images=3000, spurious_strength=0)
    assert not any(p.artefact == CLASS_ARTEFACT[p.dx] for p in no_shortcut if p.fold == "training")


def test_plain_lesions_are_a_share_of_lesions_in_every_fold_whose_test_artefact_is_mostly_another_class():
    plan = plan_ham_like(n_images=3000, plain_fraction=0.25)
    lesions = {(p.lesion_id, p.plain, p.fold) for p in plan}
    assert 0.22 < np.mean([plain for _, plain, _ in lesions]) < 0.28
    assert len({lesion for lesion, _, _ in lesions}) == len(lesions)  # all images of a lesion share its look
    for fold in FOLDS:
        assert 0.18 < np.mean([plain for _, plain, f in lesions if f == fold]) < 0.32, fold
    plain_test = [p for p in plan if p.plain and p.fold == "test"]
    assert 6 / 7 - 0.06 < np.mean([p.artefact != CLASS_ARTEFACT[p.dx] for p in plain_test]) < 6 / 7 + 0.06
    none, every = plan_ham_like(n_images=N_IMAGES, plain_fraction=0), plan_ham_like(n_images=N_IMAGES, plain_fraction=1)
    assert not any(p.plain for p in none) and all(p.plain for p in every)
    same_but_look = [dataclasses.replace(p, plain=False) for p in every]
    assert same_but_look == none  # the look has a stream of its own: split and artefacts are unchanged


def test_a_plain_lesion_does_not_show_its_class():
    image = next(p for p in plan_ham_like(n_images=N_IMAGES, plain_fraction=1) if p.dx == "nv")
    as_plain = {dx: render_ham_like(dataclasses.replace(image, dx=dx), SIZE) for dx in ("nv", "mel")}
    for drawn_as_nv, drawn_as_mel in zip(as_plain["nv"], as_plain["mel"]):  # picture and mask
        assert np.array_equal(drawn_as_nv, drawn_as_mel)
    as_class = {dx: render_ham_like(dataclasses.replace(image, dx=dx, plain=False), SIZE)[0] for dx in ("nv", "mel")}
    assert not np.array_equal(as_class["nv"], as_class["mel"]) and not np.array_equal(as_class["nv"], as_plain["nv"][0])


def test_artefacts_never_touch_the_lesion():
    image = plan_ham_like(n_images=N_IMAGES)[0]
    renders = [render_ham_like(dataclasses.replace(image, artefact=artefact), SIZE) for artefact in ARTEFACTS]
    mask = renders[0][1]
    for rgb, other_mask in renders[1:]:
        assert np.array_equal(other_mask, mask) and np.array_equal(rgb[mask], renders[0][0][mask])
        assert not np.array_equal(rgb[~mask], renders[0][0][~mask])


def test_default_size_has_three_test_lesions_per_class():
    plan = plan_ham_like()
    test_lesions = Counter(dx for dx, _ in {(p.dx, p.lesion_id) for p in plan if p.fold == "test"})
    assert len(plan) == 700 and min(test_lesions[dx] for dx in CLASSES) >= 3


@pytest.mark.parametrize(
    "arguments, named",
    [
        (dict(n_images=20), "n_images"),
        (dict(image_size=(0, 48)), "image_size"),
        (dict(image_size=(64, -1)), "image_size"),
        (dict(images_per_lesion=(0, 2)), "images_per_lesion"),
        (dict(spurious_strength=1.5), "spurious_strength"),
        (dict(plain_fraction=-0.1), "plain_fraction"),
        (dict(val_fraction=0.5, test_fraction=0.5), "val_fraction"),
    ],
)
def test_bad_arguments_are_named(tmp_path, arguments, named):
    with pytest.raises(ValueError, match=named):
        generate_ham_like(tmp_path, **arguments)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("n_images", [80, 700])
def test_enough_images_put_every_class_in_every_split(n_images):
    plan = plan_ham_like(n_images=n_images)
    assert {(p.dx, p.fold) for p in plan} == {(dx, fold) for dx in CLASSES for fold in FOLDS}


def test_too_few_images_name_the_fewest_that_work():
    with pytest.raises(ValueError, match=r"n_images=7 is too small.*use n_images >= (\d+)") as raised:
        plan_ham_like(n_images=7)
    fewest = int(re.search(r">= (\d+)", str(raised.value)).group(1))
    plan = plan_ham_like(n_images=fewest)
    assert {(dx, fold) for dx in CLASSES for fold in ("training", "test")} <= {(p.dx, p.fold) for p in plan}


def test_command_line_prints_one_line(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--n-images", "42", "--size", "64x48", "--seed", "3"])
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "42 images" in printed
    assert len(list((tmp_path / "cli" / MASK_FOLDER).iterdir())) == 42
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), "--size", "64by48"])
