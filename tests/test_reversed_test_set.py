"""Reversed synthetic sets (the artefact-class correlation of training turned round) as external test sets: their
layout, the bundles' `test_dataset_dir`, the refusal of an external set sharing images with the model's split, and
the test metrics apart by artefact agreement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from conftest import CHEST_CONFIGS, HAM_CONFIGS
from segx_monai.bundle.errors import root_cause
from segx_monai.data.chestx_det import prepare_chestx_datalist
from segx_monai.data.datalist import DatasetError
from segx_monai.data.fingerprint import CheckSplit, SplitRecord
from segx_monai.data.ham10000 import prepare_ham_datalist
from segx_monai.data.synthetic_chest import FINDING_CONFOUNDER, FINDINGS_DRAWN, generate_chestx_like, plan_chestx_like
from segx_monai.data.synthetic_derm import ARTEFACTS, CLASS_ARTEFACT, CLASSES, generate_ham_like, plan_ham_like
from segx_monai.handlers.artefacts import ArtefactAgreementMetrics
from segx_monai.metrics.artefacts import artefact_agreement, artefact_association, auroc_by_agreement

SKIN_SIZE, CHEST_SIZE = (32, 24), 32


@pytest.fixture(scope="module")
def skin(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny ordinary skin set and a reversed one (another seed, every artefact another class's)."""
    root = tmp_path_factory.mktemp("skin")
    ordinary = generate_ham_like(root / "ham", n_images=40, image_size=SKIN_SIZE, seed=0)
    return ordinary, generate_ham_like(root / "ham_reversed", n_images=14, image_size=SKIN_SIZE, seed=1, spurious_strength=1, reversed_set=True)


@pytest.fixture(scope="module")
def chest(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny ordinary chest set and a reversed one (test images only, every confounder disagreeing)."""
    root = tmp_path_factory.mktemp("chest")
    ordinary = generate_chestx_like(root / "chest", n_train=20, n_test=8, image_size=CHEST_SIZE, dicom=False)
    reversed_set = generate_chestx_like(root / "chest_reversed", n_train=0, n_test=10, image_size=CHEST_SIZE, seed=1,
                                        spurious_strength=1, dicom=False, reversed_set=True)
    return ordinary, reversed_set


def _parser(configs: Path, bundle_root: Path, dataset_dir: Path, files=("inference.yaml",), **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(configs / f) for f in files])
    parser.update({"bundle_root": str(bundle_root), "dataset_dir": str(dataset_dir), **overrides})
    return parser


def test_reversed_skin_set_shows_another_classs_artefact():
    reversed_plan = plan_ham_like(n_images=70, seed=1, spurious_strength=1, reversed_set=True)
    assert {p.fold for p in reversed_plan} == {"test"} and set(CLASSES) == {p.dx for p in reversed_plan}
    assert not any(p.artefact == CLASS_ARTEFACT[p.dx] for p in reversed_plan)
    assert all(p.artefact == ARTEFACTS[(CLASSES.index(p.dx) + 1) % len(CLASSES)] for p in reversed_plan)  # nv shows mel's
    assert min(p.image_id for p in reversed_plan) == "ISIC_0034321"  # after the ordinary ids, from ISIC_0024306
    weak = plan_ham_like(n_images=70, seed=1, spurious_strength=0, reversed_set=True)  # never the shifted artefact
    assert not any(p.artefact == ARTEFACTS[(CLASSES.index(p.dx) + 1) % len(CLASSES)] for p in weak)


def test_reversed_chest_set_confounders_disagree_with_the_labels():
    def agreement(plan):
        return [(FINDING_CONFOUNDER[f] in p.confounders) == (f in p.findings) for p in plan for f in FINDINGS_DRAWN]

    reversed_plan = plan_chestx_like(0, 60, seed=1, spurious_strength=1, reversed_set=True)
    assert {p.fold for p in reversed_plan} == {"test"} and not any(agreement(reversed_plan))
    assert all(agreement(plan_chestx_like(0, 60, seed=1, spurious_strength=0, reversed_set=True)))
    assert min(int(Path(p.file_name).stem) for p in reversed_plan) >= 100_000  # six digits: apart from the ordinary names
    with pytest.raises(ValueError, match="test images only: need n_train = 0"):
        plan_chestx_like(5, 10, reversed_set=True)


def test_reversed_sets_are_read_by_the_real_indexers(skin, chest, tmp_path):
    ham = json.loads(prepare_ham_datalist(skin[1], tmp_path / "ham.json", test_only=True).read_text())
    planned = {p.image_id: p.artefact for p in plan_ham_like(n_images=14, seed=1, spurious_strength=1, reversed_set=True)}
    assert ham["training"] == ham["validation"] == [] and {i["image_id"]: i["artefact"] for i in ham["test"]} == planned
    assert all("mask" in i for i in ham["test"])
    det = json.loads(prepare_chestx_datalist(chest[1], tmp_path / "chest.json", test_only=True).read_text())
    assert sorted(p.name for p in chest[1].iterdir()) == ["ChestX_Det_test.json", "masks", "test.json", "test_data"]
    planned = {Path(p.file_name).stem: list(p.confounders) for p in plan_chestx_like(0, 10, seed=1, spurious_strength=1, reversed_set=True)}
    assert det["training"] == det["validation"] == [] and {i["image_id"]: i["artefact"] for i in det["test"]} == planned
    with pytest.raises(DatasetError, match="no train.json"):  # as a split it lacks a train set
        prepare_chestx_datalist(chest[1], tmp_path / "split.json")


@pytest.mark.parametrize("bundle", ["ham_segx", "chestx_segx"])
def test_test_dataset_dir_chooses_the_test_set_of_every_workflow(skin, chest, bundle, tmp_path):
    configs, (ordinary, reversed_set), mask = {"ham_segx": (HAM_CONFIGS, skin, "mask"), "chestx_segx": (CHEST_CONFIGS, chest, "lung_mask")}[bundle]
    split = json.loads(Path(_parser(configs, tmp_path, ordinary).get_parsed_content("datalist")).read_text())
    every_reversed = {i["image_id"] for i in json.loads(Path(_parser(configs, tmp_path, ordinary, test_dataset_dir=str(reversed_set))
                                                            .get_parsed_content("test_datalist")).read_text())["test"]}
    expected = {ordinary: {i["image_id"] for i in split["test"]}, reversed_set: every_reversed}
    assert len(every_reversed) == {"ham_segx": 14, "chestx_segx": 10}[bundle] and not expected[ordinary] & every_reversed
    for test_dir, ids in expected.items():
        evaluate = _parser(configs, tmp_path, ordinary, ["inference.yaml", "train_classifier.yaml", "evaluate.yaml"], test_dataset_dir=str(test_dir))
        assert {i["image_id"] for i in evaluate.get_parsed_content("validate#dataset#data")} == ids
        interpret = _parser(configs, tmp_path, ordinary, ["inference.yaml", "interpret.yaml"], test_dataset_dir=str(test_dir))
        assert {i["image_id"] for i in interpret.get_parsed_content("dataset#data")} == ids
        assert interpret.get_parsed_content("run_info#test_set").startswith("every image of" if test_dir == reversed_set else "the test fold of")
        segmenter = _parser(configs, tmp_path, ordinary, ["inference.yaml", "train_segmenter.yaml", "evaluate.yaml"], test_dataset_dir=str(test_dir))
        assert len(segmenter.get_parsed_content("validate#dataset#data")) == len(ids)  # every image has its mask
        inference = _parser(configs, tmp_path, ordinary, test_dataset_dir=str(test_dir))
        images = inference.get_parsed_content("input")
        assert {Path(i).stem for i in images} == ids
        record = SplitRecord(inference.get_parsed_content("datalist_file"), ordinary)  # the default input: the split checked
        test_set = {"test_datalist": inference.get_parsed_content("test_datalist_file"), "test_dataset_dir": test_dir}
        assert CheckSplit([], record, images, **test_set).applies()
        assert CheckSplit([], record, images).applies() == (test_dir == ordinary)


def test_an_external_set_sharing_images_with_the_training_fold_is_refused_naming_both_folders(skin, tmp_path):
    ordinary = skin[0]
    copy = tmp_path / "copy_of_ham"
    shutil.copytree(ordinary, copy)
    parser = _parser(HAM_CONFIGS, tmp_path, ordinary, test_dataset_dir=str(copy))
    split = json.loads(Path(parser.get_parsed_content("datalist")).read_text())
    with pytest.raises(RuntimeError) as raised:  # MONAI's, around the cause
        parser.get_parsed_content("test_items")
    error = root_cause(raised.value)
    n_shared = len(split["training"]) + len(split["validation"])
    assert isinstance(error, DatasetError) and split["validation"]
    assert f"test_dataset_dir {copy} shares {n_shared} image id(s) with the training and validation fold of dataset_dir {ordinary}" in str(error)


# training: class 0 with artefact a, a, class 1 with b and none; class 2 never occurs. Test, one-hot: class 0 with a
# (agrees for classes 0 and 1), class 0 with b (disagrees for both), class 1 with a (disagrees), class 1 with b (agrees)
TRAINING = [("a", 0), ("a", 0), ("b", 1), ("", 1)]
TEST = [("a", 0, 0.9), ("b", 0, 0.2), ("a", 1, 0.8), ("b", 1, 0.1)]  # probability of class 0: a shortcut through a


def test_artefact_metrics_by_hand():
    labels = torch.nn.functional.one_hot(torch.tensor([c for _, c in TRAINING]), 3)
    present = torch.tensor([[a == "a", a == "b"] for a, _ in TRAINING])
    association = artefact_association(labels, present)
    assert association.tolist() == [0, 1, -1]  # class 0: a (rate 1 vs 0), class 1: b (1/2 vs 0), class 2: none
    test_labels = torch.nn.functional.one_hot(torch.tensor([c for _, c, _ in TEST]), 3)
    agree = artefact_agreement(test_labels, torch.tensor([[a == "a", a == "b"] for a, _, _ in TEST]), association)
    assert agree.tolist() == [[True, True, False], [False, False, False], [False, False, False], [True, True, False]]
    probs = torch.tensor([[p, 1 - p, 0.0] for _, _, p in TEST])
    agrees, disagrees = auroc_by_agreement(probs, test_labels, agree, association)
    assert agrees[:2].tolist() == [1.0, 1.0] and disagrees[:2].tolist() == [0.0, 0.0]
    assert agrees[2].isnan() and disagrees[2].isnan()


def test_the_handler_adds_the_metrics_only_where_artefacts_are_recorded():
    training = [{"image_id": f"t{i}", "label": c, "artefact": a} for i, (a, c) in enumerate(TRAINING)]
    test = [{"image_id": f"s{i}", "label": c, "artefact": a} for i, (a, c, _) in enumerate(TEST)]
    batch = [{"image_id": item["image_id"]} for item in test]
    output = [{"pred": torch.tensor([p, 1 - p, 0.0]), "label": torch.nn.functional.one_hot(torch.tensor(c), 3)} for _, c, p in TEST]

    def metrics(test_items, training_items):
        engine = Engine(lambda engine, batch: output)
        ArtefactAgreementMetrics(test_items, training_items, num_classes=3).attach(engine)
        return engine.run([batch], max_epochs=1).metrics

    found = metrics(test, training)
    assert found["test_macro_auroc_artefact_agrees"] == 1.0 and found["test_macro_auroc_artefact_disagrees"] == 0.0
    assert found["test_artefact_agreement"] == 0.5  # the first and last images agree for both associated classes
    assert found["test_auroc_artefact_agrees"][:2].tolist() == [1.0, 1.0]
    without = [{k: v for k, v in item.items() if k != "artefact"} for item in test]
    assert metrics(without, training) == {} and metrics(test, [{k: v for k, v in i.items() if k != "artefact"} for i in training]) == {}
