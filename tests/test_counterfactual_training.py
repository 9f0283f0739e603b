"""The counterfactual generator's training (COIN): the frozen classifier is left as found, a trained generator removes
what the classifier reads and leaves normal images alone, every loss weight and validity option acts, a killed bundle
training resumes, and a generator refuses to explain for other classifier weights than its own."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, from_engine
from torch import nn
from torch.utils.data import DataLoader

from conftest import CHEST_CONFIGS, CHEST_TINY, HAM_CONFIGS, REPO, TINY, chest_workflow, cli_settings, ham_workflow, run_workflow
from test_run_safety import kill, partial_files, wait_for
from segx_monai.data.fingerprint import SplitRecord, saved_split
from segx_monai.engines import CounterfactualLoss, CounterfactualOutcome, CounterfactualTrainer, CounterfactualValidity, outcome_probabilities
from segx_monai.handlers.checkpoint import epoch_checkpoints, latest_epoch_checkpoint
from segx_monai.handlers.classifier_record import CheckGeneratorClassifier, ClassifierRecord, WeightsWithClassifier, check_generator
from segx_monai.handlers.model_selection import selection_score
from segx_monai.metrics.counterfactual import counterfactual_validity
from segx_monai.networks.counterfactual import build_discriminator, build_generator
from segx_monai.utils.files import sha256_file

TRAIN_COUNTERFACTUAL = ["inference.yaml", "train_counterfactual.yaml"]
SIZE = 32
NORMAL = torch.zeros(1)  # the target of a one-finding multi-label classifier: no finding


def tiny_generator(num_classes: int = 1) -> nn.Module:
    return build_generator(1, num_classes, 0.0, 1.0, features=(8, 8, 16, 32, 64, 8))


def tiny_trainer(data: list[dict], classifier: nn.Module, epochs: int = 1, **weights) -> CounterfactualTrainer:
    """A trainer of a fresh tiny generator and discriminator (seeded) against ``classifier``, target no finding."""
    torch.manual_seed(0)
    generator, discriminator = tiny_generator(len(data[0]["label"])), build_discriminator(1, channels=8, num_layers=2)
    adam = lambda network: torch.optim.Adam(network.parameters(), 2e-3, betas=(0.5, 0.999))  # noqa: E731
    return CounterfactualTrainer("cpu", epochs, DataLoader(data, batch_size=16), generator, discriminator, classifier,
                                 adam(generator), adam(discriminator), torch.zeros(len(data[0]["label"])), multi_label=True, **weights)


def square_image(abnormal: bool, rng: torch.Generator) -> torch.Tensor:
    """A dark noisy image; an abnormal one has a bright 8 px square somewhere."""
    image = torch.rand(1, SIZE, SIZE, generator=rng) * 0.2
    if abnormal:
        i, j = torch.randint(0, SIZE - 8, (2,), generator=rng).tolist()
        image[:, i:i + 8, j:j + 8] = 0.9
    return image


def squares(n: int, seed: int = 0) -> list[dict]:
    """``n`` images, normal and abnormal in turn, labelled (one finding: the square)."""
    rng = torch.Generator().manual_seed(seed)
    return [{"image": square_image(i % 2 == 1, rng), "label": torch.tensor([float(i % 2)])} for i in range(n)]


class SquareReader(nn.Module):
    """A fixed classifier of one finding whose logit reads bright pixels: 0.5 x (brightness above 0.5, summed - 8),
    +12 on a square of 0.9, -4 without."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((x - 0.5).relu().sum(dim=(1, 2, 3)) - 8)[:, None]


class MixedClassifier(nn.Module):
    """Batch norm (whose running statistics a train-mode forward would change), dropout, a submodule in eval mode
    inside a module in train mode, a frozen parameter and gradients already there."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(4, 1)
        self.features[1].eval()
        self.head.bias.requires_grad_(False)
        for param in self.parameters():
            param.grad = torch.randn_like(param) if param.requires_grad else None
        self.features[0].bias.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def validity_of(probabilities: torch.Tensor) -> float:
    """Counterfactual validity (defaults) of (B, 2) target probabilities before and after."""
    return counterfactual_validity(probabilities[:, 0], probabilities[:, 1])[0]


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["modes"] == after["modes"] and before["requires_grad"] == after["requires_grad"]
    for part in ("state", "grads"):
        assert before[part].keys() == after[part].keys()
        for name, value in before[part].items():
            assert (value is None and after[part][name] is None) or torch.equal(value, after[part][name]), (part, name)


def validation(generator: nn.Module, classifier: nn.Module, data: list[dict]) -> SupervisedEvaluator:
    """The bundles' validation: the outcome wrapper under MONAI's evaluator, validity and KL consistency."""
    metrics = {"val_validity": IgniteMetricHandler(CounterfactualValidity(NORMAL, True), output_transform=from_engine(["pred", "label"])),
               "val_loss": IgniteMetricHandler(CounterfactualLoss(NORMAL, True), output_transform=from_engine(["pred", "label"]))}
    return SupervisedEvaluator("cpu", DataLoader(data, batch_size=8), CounterfactualOutcome(classifier, generator, NORMAL),
                               key_val_metric={"val_validity": metrics.pop("val_validity")}, additional_metrics=metrics)


# ---- (a) the frozen classifier


def test_training_and_validation_leave_the_classifier_exactly_as_found():
    classifier = MixedClassifier()
    before = snapshot(classifier)
    data = squares(32)
    trainer = tiny_trainer(data, classifier)
    generator_before = [p.clone() for p in trainer.generator.parameters()]
    trainer.run()
    evaluator = validation(trainer.generator, classifier, data)
    evaluator.run()
    assert_same(before, snapshot(classifier))
    assert any(not torch.equal(a, b) for a, b in zip(generator_before, trainer.generator.parameters()))  # it trained
    assert {"val_validity", "val_loss"} <= set(evaluator.state.metrics)
    assert {"loss", "d_loss", "adversarial", "consistency", "reconstruction", "total_variation"} <= set(trainer.state.output[0])


def test_a_failing_iteration_leaves_the_classifier_as_found():
    classifier = MixedClassifier()
    before = snapshot(classifier)
    trainer = tiny_trainer(squares(32), classifier)
    # iteration 2 fails in the generator's step, with the classifier frozen
    trainer.add_event_handler(Events.ITERATION_STARTED(once=2), lambda: setattr(trainer, "generator_terms", lambda *args: 1 / 0))
    with pytest.raises(ZeroDivisionError):
        trainer.run()
    assert_same(before, snapshot(classifier))


# ---- (b) a tiny hand-made case


def test_a_trained_generator_removes_the_square_and_leaves_normal_images_alone():
    classifier, target = SquareReader(), NORMAL
    trainer = tiny_trainer(squares(64), classifier, epochs=6)
    rng = torch.Generator().manual_seed(1)
    images = torch.stack([square_image(abnormal, rng) for abnormal in [False] * 8 + [True] * 8])
    outcome = CounterfactualOutcome(classifier, trainer.generator, target)
    untrained = outcome_probabilities(outcome(images), target, True)
    assert validity_of(untrained) == 0.0  # the zero-initialised generator changes nothing
    trainer.run()
    probabilities = outcome_probabilities(outcome(images), target, True)
    with torch.no_grad():
        change = (trainer.generator(images, target.expand(16, -1)) - images).abs()
    square = images[8:] > 0.5
    assert validity_of(probabilities) >= 0.75  # abnormal: the classifier now says "no finding"
    assert change[8:][square].mean() > 0.3  # by dimming the square
    assert change[:8].mean() < 0.05 and change[8:][~square].mean() < 0.05  # the rest, and normal images, nearly unchanged
    assert (probabilities[:8, 1] > 0.95).all()


# ---- (d) every option changes something


@pytest.mark.parametrize("weight", ["adversarial_weight", "consistency_weight", "reconstruction_weight", "total_variation_weight"])
def test_each_loss_weight_changes_the_generators_step(weight):
    data = squares(16)
    results = []
    for value in (0.0, 1.0):
        trainer = tiny_trainer(data, SquareReader(), **{weight: value})
        torch.nn.init.normal_(trainer.generator.unet.final_conv.weight, std=0.05)  # every term non-zero from the start
        trainer.run()
        results.append((float(trainer.state.output[0]["loss"]), torch.cat([p.flatten() for p in trainer.generator.parameters()])))
    assert results[0][0] != results[1][0] and not torch.equal(results[0][1], results[1][1])


# logits (B, 2 before/after, K=2 findings) of hand-made cases; the target is no finding, so each sample's target
# probability is 1 - p of the finding most probable before: sample 1 goes from 0.1 to 0.95 (+0.85), sample 2 from
# 0.03 to 0.7 (+0.67), sample 3 is not abnormal (0.6 before)
def logit(p: float) -> float:
    return math.log(p / (1 - p))


CASES = torch.tensor([[[logit(0.9), logit(0.1)], [logit(0.05), logit(0.1)]],
                      [[logit(0.2), logit(0.97)], [logit(0.2), logit(0.3)]],
                      [[logit(0.4), logit(0.1)], [logit(0.01), logit(0.01)]]])


def validity(metric: CounterfactualValidity, logits: torch.Tensor = CASES) -> float:
    metric.reset()
    metric(list(logits))
    return float(metric.aggregate())


@pytest.mark.parametrize("key, value, expected", [
    (None, None, 0.5),  # defaults 0.8 / 0.8: samples 1 and 2 are confident, only sample 1 rises by more than 0.8
    ("validity_confidence", 0.95, 0.0),  # only sample 2 (0.03 <= 0.05) is confident, and it rises by 0.67
    ("validity_tau", 0.5, 1.0),  # both confident samples rise by more than 0.5
])
def test_each_validity_option_of_the_bundles_changes_the_validity(key, value, expected):
    parser = ConfigParser()
    parser.read_config([str(CHEST_CONFIGS / c) for c in TRAIN_COUNTERFACTUAL])
    if key is not None:
        parser[key] = value
    handler = parser.get_parsed_content("counterfactual_training#key_metric#val_validity")
    assert validity(handler.metric_fn) == pytest.approx(expected)


@pytest.mark.parametrize("betas", [(0.5, 0.999), (0.9, 0.99)])
def test_gan_betas_reach_both_optimizers_of_the_bundles(betas):
    parser = ConfigParser()
    parser.read_config([str(CHEST_CONFIGS / c) for c in TRAIN_COUNTERFACTUAL])
    parser.update({"gan_betas": list(betas), "device": "$torch.device('cpu')"})
    for optimizer in ("optimizer", "counterfactual_training#d_optimizer"):
        assert parser.get_parsed_content(optimizer).param_groups[0]["betas"] == betas


def test_validity_without_a_confident_sample_is_nan_and_ranked_lowest():
    metric = CounterfactualValidity(torch.zeros(2), multi_label=True)
    assert math.isnan(validity(metric, CASES[2:]))
    assert selection_score(validity(metric, CASES[2:]), 0.1) < selection_score(0.0, 0.1)


def test_validation_probabilities_and_loss_by_hand():
    # multi-label, no finding: KL = -log(1 - p) summed over findings; after p = (0.5, 0.75): log 2 + log 4 = log 8
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3)]]])
    loss = CounterfactualLoss(torch.zeros(2), multi_label=True)
    loss(list(logits))
    assert float(loss.aggregate()) == pytest.approx(math.log(8))
    # single label, target class 0: its softmax probability, (0.5, 0.25)
    assert outcome_probabilities(logits, torch.tensor([1.0, 0.0]), multi_label=False)[0].tolist() == pytest.approx([0.5, 0.25])


# ---- (e) a generator belongs to the classifier weights it was trained against


def test_a_generator_refuses_other_classifier_weights(tmp_path):
    own, other, generator_file = tmp_path / "model.pt", tmp_path / "other.pt", tmp_path / "counterfactual.pt"
    torch.manual_seed(0)
    torch.save(nn.Linear(2, 1).state_dict(), own)
    torch.save(nn.Linear(2, 1).state_dict(), other)
    generator = tiny_generator()
    torch.save(WeightsWithClassifier(generator, SplitRecord(None, tmp_path), ClassifierRecord(own)).state_dict(), generator_file)
    check_generator(generator_file, own)
    tiny_generator().load_state_dict(torch.load(generator_file, weights_only=True))  # still a plain state dict

    def refused(classifier_file: Path, problem: str) -> None:
        engine = Engine(lambda e, b: None)
        CheckGeneratorClassifier(generator_file, classifier_file).attach(engine)
        with pytest.raises(ValueError, match=problem) as error:
            engine.run([0])
        for part in (f"generator_file {generator_file}", f"classifier_file {classifier_file}", "rerun train_counterfactual.yaml"):
            assert part in str(error.value)

    refused(other, "was trained against other classifier weights")
    torch.save(generator.state_dict(), generator_file)  # a generator file without the record
    refused(own, "records no classifier weights")


def test_a_resume_point_of_other_classifier_weights_is_refused(tmp_path):
    own, other = tmp_path / "model.pt", tmp_path / "other.pt"
    own.write_bytes(b"weights")
    other.write_bytes(b"other weights")
    saved = ClassifierRecord(own).state_dict()
    ClassifierRecord(own).load_state_dict(saved)
    with pytest.raises(ValueError, match="--resume False"):
        ClassifierRecord(other).load_state_dict(saved)


# ---- (c) the bundles' workflow

FAST = {"image_size": 32, "batch_size": 16}  # the classifier, trained at 64 px, reads 32 px images as well


def test_a_killed_chest_generator_training_resumes_and_ends_with_a_complete_generator(trained_chest_bundle, chest_dir, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(trained_chest_bundle, root)
    classifier_file = root / "models" / "model.pt"
    classifier_digest = sha256_file(classifier_file)
    checkpoints = root / "runs" / "counterfactual" / "checkpoints"
    settings = cli_settings(CHEST_CONFIGS, TRAIN_COUNTERFACTUAL, {**CHEST_TINY, **FAST, "max_epochs": 3})
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str([str(CHEST_CONFIGS / c) for c in TRAIN_COUNTERFACTUAL]),
               "--bundle_root", str(root), "--dataset_dir", str(chest_dir), *[a for k, v in settings.items() for a in (f"--{k}", str(v))]]
    with (tmp_path / "first.log").open("w") as log:
        child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: (checkpoints / "resume_checkpoint_1.pt").exists(), child, poll=0.05)
        finally:
            kill(child)
    killed_at = int(latest_epoch_checkpoint(checkpoints).stem.rsplit("_", 1)[1])
    assert set(torch.load(latest_epoch_checkpoint(checkpoints), weights_only=True)) == {
        "generator", "discriminator", "split", "classifier", "optimizer", "d_optimizer", "lr_scheduler", "model_selection",
        "key_metric_tracking", "trainer"}

    workflow = chest_workflow(root, chest_dir, TRAIN_COUNTERFACTUAL, max_epochs=killed_at + 1, **FAST)
    workflow.initialize()
    trainer, epochs = workflow.parser.get_parsed_content("train#trainer"), []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    assert epochs == [killed_at + 1]  # the epochs before were restored, not trained again
    assert trainer.weights == {"adversarial": 1.0, "consistency": 1.0, "reconstruction": 1.0, "total_variation": 5e-5}
    assert [p.name for p in epoch_checkpoints(checkpoints)] == [f"resume_checkpoint_{killed_at + 1}.pt"] and partial_files(root) == []
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert {"val_validity", "val_loss"} <= set(evaluator.state.metrics)
    generator_file = root / "models" / "counterfactual.pt"
    state = torch.load(generator_file, weights_only=True)
    workflow.parser.get_parsed_content("generator").load_state_dict(state)  # strict: every weight is there
    assert saved_split(state)["fingerprint"] is not None
    check_generator(generator_file, classifier_file)
    assert sha256_file(classifier_file) == classifier_digest  # the classifier's weights are left alone


def test_the_skin_overlay_trains_a_generator_for_its_target_class(trained_ham_bundle, ham_dir, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(trained_ham_bundle, root)
    workflow = run_workflow(ham_workflow(root, ham_dir, TRAIN_COUNTERFACTUAL))
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.multi_label is False and trainer.target.tolist() == [1.0, 0, 0, 0, 0, 0, 0]  # nv, softmax
    check_generator(root / "models" / "counterfactual.pt", root / "models" / "model.pt")
    assert (root / "runs" / "counterfactual" / "checkpoints" / "resume_checkpoint_1.pt").is_file()


@pytest.mark.parametrize("target, expected", [("nv", [1.0, 0, 0, 0, 0, 0, 0]), ("mel", [0, 1.0, 0, 0, 0, 0, 0])])
def test_the_skin_target_class_reaches_training_validation_and_the_explainer(target, expected):
    parser = ConfigParser()
    parser.read_config([str(HAM_CONFIGS / c) for c in TRAIN_COUNTERFACTUAL])
    parser.update({"counterfactual_target": target, "device": "$torch.device('cpu')"})
    assert parser.get_parsed_content("class_names")[expected.index(1.0)] == target
    assert parser.get_parsed_content("counterfactual_posterior").tolist() == expected
    assert parser.get_parsed_content("counterfactual_training#key_metric#val_validity").metric_fn.target.tolist() == expected
    assert parser.get_parsed_content("counterfactual_training#outcome").explainer.target.tolist() == expected
    assert parser.get_parsed_content("explainer_options#counterfactual#target").tolist() == expected


def test_generator_settings_change_the_generator():
    parser = ConfigParser()
    parser.read_config([str(CHEST_CONFIGS / "inference.yaml")])
    parser.update({"device": "$torch.device('cpu')", "display_mean": [0.25], "display_std": [0.5]})
    generator = parser.get_parsed_content("generator")
    assert generator.low.flatten().tolist() == [-0.5] and generator.high.flatten().tolist() == [1.5]  # pixel 0 and 1
    parser.update({"generator_features": [8, 8, 16, 32, 64, 8], "image_high": [1.0]})
    smaller = parser.get_parsed_content("generator", lazy=False)
    assert smaller.high.flatten().tolist() == [1.0]
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in generator.parameters()) / 2


def test_an_unknown_target_class_ends_the_training_naming_the_key(trained_ham_bundle, ham_dir, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(trained_ham_bundle, root)
    settings = cli_settings(HAM_CONFIGS, TRAIN_COUNTERFACTUAL, {**TINY, "counterfactual_target": "melanoma"})
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str([str(HAM_CONFIGS / c) for c in TRAIN_COUNTERFACTUAL]),
               "--bundle_root", str(root), "--dataset_dir", str(ham_dir), *[a for k, v in settings.items() for a in (f"--{k}", str(v))]]
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode != 0 and last.startswith("error: "), done.stdout[-3000:]
    assert "counterfactual_target 'melanoma'" in last and "'nv'" in last and "'mel'" in last, last
    assert not (root / "models" / "counterfactual.pt").exists()
