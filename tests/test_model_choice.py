"""Which epoch is the best model: ties of the key metric broken by the validation loss, macro metrics over the classes
present in a fold (with a warning naming the others), and a warning when the validation fold is too small."""

from __future__ import annotations

import csv
import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import chest_workflow, ham_workflow
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping
from monai.handlers import CheckpointSaver
from PIL import Image

from segx_monai.handlers.model_selection import TIE_WEIGHT, ModelSelection, selection_score
from segx_monai.metrics.classification import BalancedAccuracy, MacroAUROC, MeanLoss, MulticlassAccuracy

# a network small enough that a real training of a few epochs takes seconds on a CPU (the bundle's DenseNet121, tiny)
TINY_DENSENET = {
    "_target_": "monai.networks.nets.DenseNet", "spatial_dims": 2, "in_channels": 3, "out_channels": "@num_classes",
    "init_features": 8, "growth_rate": 8, "block_config": [2, 2], "bn_size": 2,
}


@pytest.fixture
def records():
    """Log records of the segx_monai loggers, whatever logging configuration a workflow installs."""
    found = []
    handler = logging.Handler(logging.INFO)
    handler.emit = found.append
    logger = logging.getLogger("segx_monai")
    logger.addHandler(handler)
    yield found
    logger.removeHandler(handler)


def warnings_of(records) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == logging.WARNING]


# ---- golden tests of the ordering


def test_selection_score_orders_by_metric_then_lower_loss():
    # equal metric: the lower loss wins; a higher metric wins whatever the loss; NaN metrics rank lowest, then by loss
    assert selection_score(1.0, 0.3) > selection_score(1.0, 0.9) > selection_score(1.0, math.inf)
    assert selection_score(0.9 + 1e-6, 50.0) > selection_score(0.9, 0.0)
    assert selection_score(0.0, 9.0) > selection_score(math.nan, 0.1) > selection_score(math.nan, 0.2)
    assert selection_score(1.0, 0.0) == pytest.approx(1.0 + TIE_WEIGHT, abs=1e-15)


def epochs_engine(epochs: list[tuple[float, float]], network: torch.nn.Linear) -> Engine:
    """An evaluator-like engine whose epoch e reports ``val_auroc, val_loss = epochs[e - 1]`` and sets every weight to e."""

    def report(engine: Engine) -> None:
        auroc, loss = epochs[engine.state.epoch - 1]
        engine.state.metrics.update(val_auroc=auroc, val_loss=loss)
        network.weight.data.fill_(engine.state.epoch)

    engine = Engine(lambda e, b: None)
    engine.state.key_metric_name, engine.state.best_metric, engine.state.best_metric_epoch = "val_auroc", -1, -1
    engine.add_event_handler(Events.EPOCH_COMPLETED, report)
    engine.data_loader = torch.utils.data.DataLoader(list(range(8)))
    return engine


def test_ties_go_to_the_lower_loss_for_saver_best_epoch_and_early_stop(tmp_path, records):
    # epoch 1 ties with 2-4 at AUROC 1.0; epoch 3 has the lowest loss; epoch 5 is worse on AUROC though its loss is lowest
    epochs = [(1.0, 0.90), (1.0, 0.50), (1.0, 0.20), (1.0, 0.40), (0.95, 0.01)]
    network = torch.nn.Linear(1, 1, bias=False)
    engine = epochs_engine(epochs, network)
    selection = ModelSelection(loss_name="val_loss", score_name="val_selection_score")
    selection.attach(engine)
    saver = CheckpointSaver(str(tmp_path), {"model": network}, save_key_metric=True, key_metric_name="val_selection_score", key_metric_filename="best.pt")
    saver.attach(engine)
    stop = EarlyStopping(patience=2, score_function=lambda e: e.state.metrics["val_selection_score"], trainer=engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, stop)
    engine.run([0], max_epochs=len(epochs))

    assert engine.state.best_metric_epoch == 3 and engine.state.best_metric == 1.0
    assert torch.load(tmp_path / "best.pt", weights_only=True)["weight"].item() == 3.0  # one object: saved as its state_dict
    assert engine.state.epoch == 5  # epochs 4 and 5 did not improve: patience 2 stops after epoch 5
    assert stop.counter == 2 and stop.best_score == selection_score(1.0, 0.20)
    # the fold of 8 samples is too small to rank epochs: said once, not every epoch
    assert [m for m in warnings_of(records) if "too few to rank epochs" in m and "8 samples" in m and "val_loss" in m] != []
    assert len([m for m in warnings_of(records) if "too few to rank epochs" in m]) == 1


def test_model_selection_state_survives_a_restart():
    first = ModelSelection()
    engine = epochs_engine([(1.0, 0.5), (1.0, 0.2)], torch.nn.Linear(1, 1))
    first.attach(engine)
    engine.run([0], max_epochs=2)
    restarted = ModelSelection()
    restarted.load_state_dict(first.state_dict())
    engine = epochs_engine([(1.0, 0.5), (1.0, 0.2), (1.0, 0.3)], torch.nn.Linear(1, 1))
    engine.state.epoch = 2  # resumed after epoch 2: epoch 3 has a higher loss and is not the best
    restarted.attach(engine)
    engine.run([0], max_epochs=3)
    assert (engine.state.best_metric_epoch, restarted.best_epoch) == (2, 2)


def test_model_selection_names_a_missing_loss_metric():
    engine = Engine(lambda e, b: None)
    engine.state.key_metric_name = "val_auroc"
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_auroc=1.0))
    ModelSelection(loss_name="val_loss").attach(engine)
    with pytest.raises(KeyError, match="'val_loss'.*computed \\['val_auroc'\\]"):
        engine.run([0], max_epochs=1)


# ---- golden tests of the macro metrics over the classes present


def test_macro_auroc_over_present_classes_names_the_absent_one(records):
    # class 0: positives 0.9, 0.3 vs negatives 0.6, 0.1 -> 3 of 4 pairs = 0.75; class 1: separable = 1.0; class 2 absent
    y_pred = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.1, 0.1], [0.6, 0.8, 0.1], [0.1, 0.7, 0.1]])
    y = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1]), 3).float()
    metric, per_class = MacroAUROC(class_names=["nv", "mel", "df"]), MacroAUROC(per_class=True)
    for m in (metric, per_class):
        m(y_pred, y)
    assert metric.aggregate().item() == pytest.approx((0.75 + 1.0) / 2)
    assert metric.aggregate().item() == pytest.approx(0.875)  # a second epoch: the warning is not repeated
    assert torch.allclose(per_class.aggregate()[:2], torch.tensor([0.75, 1.0], dtype=torch.float64)) and per_class.aggregate()[2].isnan()
    said = warnings_of(records)  # once per metric object, however many epochs: by name, or by index without names
    assert len(said) == 2 and all("AUROC over the 2 of 3 classes with both outcomes among 4 samples" in m for m in said)
    assert "no positive ['df'], no negative []" in said[0] and "no positive [2], no negative []" in said[1]


def test_multilabel_macro_auroc_leaves_out_findings_without_positives_or_negatives(records):
    # finding 0: positives 0.7, 0.4 vs negative 0.2 -> 1.0; finding 3: positive 0.3 vs negatives 0.6, 0.1 -> 0.5
    y = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 0, 1, 0]]).float()
    y_pred = torch.tensor([[0.7, 0.5, 0.5, 0.3], [0.2, 0.5, 0.5, 0.6], [0.4, 0.5, 0.5, 0.1]])
    metric = MacroAUROC(class_names=["Effusion", "Nodule", "Fibrosis", "Mass"])
    metric(y_pred, y)
    assert metric.aggregate().item() == pytest.approx(0.75)
    said = warnings_of(records)
    assert len(said) == 1 and "no positive ['Nodule'], no negative ['Fibrosis']" in said[0]


def test_macro_auroc_warns_when_fewer_than_two_classes_can_rank(records):
    metric = MacroAUROC(class_names=["nv", "mel"])
    metric(torch.tensor([[0.8, 0.2], [0.6, 0.4]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert metric.aggregate().isnan()
    assert any("fewer than 2 classes with both outcomes among 2 samples" in m for m in warnings_of(records))


def test_balanced_accuracy_over_present_classes(records):
    # class 0: 1 of 2 right, class 1: 1 of 1, class 2 absent -> (0.5 + 1.0) / 2
    metric = BalancedAccuracy(3, class_names=["nv", "mel", "df"])
    metric(torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0]]), torch.nn.functional.one_hot(torch.tensor([0, 0, 1]), 3).float())
    assert metric.aggregate().item() == pytest.approx(0.75)
    assert any("2 of 3 classes present: no sample of ['df']" in m for m in warnings_of(records))


def test_accuracy_of_logits_and_class_indices_is_that_of_probabilities_and_one_hot_labels():
    # as a trainer hands them over, decollated: argmax 0, 1, 0, 2 against 0, 1, 2, 2 -> 3 of 4 right
    logits, labels = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, -1.0, 5.0]]), torch.tensor([0, 1, 2, 2])
    from_logits, from_probabilities = MulticlassAccuracy(3), MulticlassAccuracy(3)
    from_logits(list(logits), list(labels))
    from_probabilities(list(logits.softmax(1)), list(torch.nn.functional.one_hot(labels, 3).float()))
    assert from_logits.aggregate().item() == from_probabilities.aggregate().item() == 0.75


def test_mean_loss_by_hand():
    single = MeanLoss()
    single(torch.tensor([[0.5, 0.5], [0.9, 0.1]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert single.aggregate().item() == pytest.approx((-math.log(0.5) - math.log(0.1)) / 2)
    multi = MeanLoss(multi_label=True)
    multi(torch.tensor([[0.8, 0.4]]), torch.tensor([[1.0, 0.0]]))
    assert multi.aggregate().item() == pytest.approx((-math.log(0.8) - math.log(0.6)) / 2)
    maps = MeanLoss()  # (B, K, H, W) segmentation probabilities: the mean per-pixel cross-entropy
    maps(torch.tensor([[[[0.9, 0.2]], [[0.1, 0.8]]]]), torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]]))
    assert maps.aggregate().item() == pytest.approx((-math.log(0.9) - math.log(0.8)) / 2)


# ---- real trainings


def two_class_ham(root, per_class: int = 10, seed: int = 0):
    """A HAM10000-layout folder with only nv (dark) and mel (bright) images, one lesion each: AUROC saturates at once."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for dx, level in (("nv", 60), ("mel", 190)):
        for i in range(per_class):
            image_id = f"ISIC_{dx}{i:03d}"
            Image.fromarray(np.clip(level + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)).save(root / "images" / f"{image_id}.jpg")
            rows.append({"lesion_id": f"HAM_{dx}{i:03d}", "image_id": image_id, "dx": dx})
    with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["lesion_id", "image_id", "dx"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def record_epochs(workflow):
    """Per validation epoch: the metrics and a copy of the network's weights."""
    epochs = []
    network = workflow.parser.get_parsed_content("network")

    def record(engine):
        epochs.append((dict(engine.state.metrics), {k: v.detach().clone() for k, v in network.state_dict().items()}))

    workflow.parser.get_parsed_content("validate#evaluator").add_event_handler(Events.EPOCH_COMPLETED, record)
    return epochs


def test_saturated_auroc_keeps_the_later_epoch_with_lower_loss(tmp_path, records):
    workflow = ham_workflow(
        tmp_path / "bundle", two_class_ham(tmp_path / "HAM10000"), ["inference.yaml", "train_classifier.yaml"], max_epochs=3,
        val_fraction=0.3, test_fraction=0.2, aug_prob=0.0, early_stop_patience=10, network_def=TINY_DENSENET, learning_rate=1e-2,
    )
    workflow.initialize()
    epochs = record_epochs(workflow)
    workflow.run()
    workflow.finalize()

    aurocs, losses = [m["val_auroc"] for m, _ in epochs], [m["val_loss"] for m, _ in epochs]
    assert aurocs == [1.0] * 3  # the tie: MONAI alone keeps epoch 1 for ever
    best = min(range(3), key=lambda e: losses[e]) + 1
    assert best > 1 and losses[best - 1] < losses[0]
    # as on real data: epoch 1 ranks perfectly yet predicts one class for all; the kept epoch is really better
    assert epochs[0][0]["val_accuracy"] == 0.5 and epochs[best - 1][0]["val_accuracy"] == 1.0
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (1.0, best)
    saved = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in epochs[best - 1][1].items())
    assert not all(torch.equal(saved[k], v) for k, v in epochs[0][1].items())
    said = warnings_of(records)
    assert any("no positive ['bkl', 'bcc', 'akiec', 'vasc', 'df']" in m for m in said)
    assert any("The validation fold has 6 samples" in m for m in said)


def test_the_training_accuracy_is_the_share_of_logits_whose_arg_max_is_the_label(tmp_path):
    """The classifier's training runs no per-sample post-processing: its accuracy reads the logits and class indices,
    and is the same value as from the probabilities and one-hot labels it was computed from before."""
    workflow = ham_workflow(tmp_path / "bundle", two_class_ham(tmp_path / "HAM10000"), ["inference.yaml", "train_classifier.yaml"],
                            max_epochs=2, val_fraction=0.3, test_fraction=0.2, network_def=TINY_DENSENET, learning_rate=1e-2)
    workflow.initialize()
    trainer, outputs, accuracies = workflow.parser.get_parsed_content("train#trainer"), [], []
    assert trainer.optim_set_to_none
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: outputs.clear())
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.extend(e.state.output))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: accuracies.append((e.state.metrics["train_accuracy"], [dict(o) for o in outputs])))
    workflow.run()
    for reported, items in accuracies:
        logits, labels = torch.stack([o["pred"] for o in items]), torch.tensor([o["label"] for o in items])
        assert not torch.allclose(logits.sum(1), torch.ones(len(items)))  # logits, not probabilities
        assert reported == (logits.softmax(1).argmax(1) == labels).double().mean().item()


def test_chest_classifier_ranks_by_the_selection_score(tmp_path, chest_dir):
    workflow = chest_workflow(tmp_path, chest_dir, ["inference.yaml", "train_classifier.yaml"], max_epochs=2, network_def={**TINY_DENSENET, "in_channels": "@in_channels"})
    workflow.initialize()
    epochs = record_epochs(workflow)
    workflow.run()
    workflow.finalize()
    scores = [selection_score(m["val_auroc"], m["val_loss"]) for m, _ in epochs]
    assert [m["val_selection_score"] for m, _ in epochs] == scores
    best = max(range(2), key=lambda e: scores[e]) + 1
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.best_metric_epoch == best
    saved = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in epochs[best - 1][1].items())
    assert json.loads((tmp_path / "models" / "thresholds.json").read_text())["epoch"] == best


def test_segmenter_scores_dice_then_the_per_pixel_loss(tmp_path, ham_dir):
    workflow = ham_workflow(tmp_path, ham_dir, ["inference.yaml", "train_segmenter.yaml"], segmenter_features=[4, 4, 8, 8, 16, 4])
    workflow.initialize()
    epochs = record_epochs(workflow)
    workflow.run()
    metrics = epochs[0][0]  # the probabilities kept beside the discrete masks give a real cross-entropy
    assert 0 < metrics["val_loss"] < 5 and metrics["val_selection_score"] == selection_score(metrics["val_dice"], metrics["val_loss"])
    assert workflow.parser.get_parsed_content("validate#best_model_saver")._key_metric_checkpoint._saved[0].priority == metrics["val_selection_score"]
