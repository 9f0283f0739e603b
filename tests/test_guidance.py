"""Segmentation-guided training: the guidance term by hand on 4x4 maps, its gradients, the trainer handler, the bundles."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import EMPTY, RAMP, TRAIN_CLASSIFIER, block, chest_workflow, ham_workflow, run_workflow
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch import nn

from segx_monai.bundle.errors import root_cause
from segx_monai.core.guidance import gradcam_maps, input_gradient_maps, outside_mass, true_class_scores
from segx_monai.handlers.guidance import ExplanationGuidance

TOP_HALF = block(slice(0, 2), slice(None))


def test_outside_mass_by_hand():
    inside = RAMP * TOP_HALF
    assert outside_mass(inside, TOP_HALF).item() == 0.0
    # the ramp 0..15: rows 0-1 hold 0+...+7 = 28 of 120, rows 2-3 the other 92
    assert outside_mass(RAMP, TOP_HALF).item() == pytest.approx(92 / 120)
    assert outside_mass(RAMP * ~TOP_HALF, TOP_HALF).item() == pytest.approx(1.0)
    # grown by one pixel the region takes row 2 too (8+...+11 = 38): 54 of 120 stays outside
    assert outside_mass(RAMP, TOP_HALF, margin=1).item() == pytest.approx(54 / 120)
    # nothing to move, or nowhere to move it: no penalty
    assert outside_mass(torch.zeros(1, 1, 4, 4), TOP_HALF).item() == 0.0
    assert outside_mass(RAMP, EMPTY).item() == 0.0


def test_outside_mass_is_per_image_and_resamples_small_maps():
    maps = torch.cat([RAMP, RAMP * TOP_HALF])
    regions = torch.cat([TOP_HALF, TOP_HALF])
    assert outside_mass(maps, regions).tolist() == pytest.approx([92 / 120, 0.0])
    # a 2x2 map (a CAM) on the 4x4 region's grid: bottom cells only -> all mass outside the top half
    cam = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    assert outside_mass(cam, TOP_HALF).item() > 0.5


def test_outside_mass_gradient_moves_evidence_into_the_region():
    maps = RAMP.clone().requires_grad_()
    outside_mass(maps, TOP_HALF).backward()
    assert (maps.grad[TOP_HALF] < 0).all()  # more evidence inside lowers the penalty
    assert (maps.grad[~TOP_HALF] > 0).all()


def test_true_class_scores_single_and_multi_label():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    scores, has_class = true_class_scores(logits, torch.tensor([2, 0]))
    assert scores.tolist() == [3.0, 4.0] and has_class.all()
    scores, has_class = true_class_scores(logits, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    assert scores.tolist() == [4.0, 0.0] and has_class.tolist() == [True, False]


def test_input_gradient_of_a_linear_classifier_is_its_weights_and_stays_in_the_graph():
    weight = torch.tensor([[1.0, -2.0]]).repeat_interleave(16, dim=1).requires_grad_()  # channel 0: +1, channel 1: -2
    inputs = torch.rand(1, 2, 4, 4, requires_grad=True)
    logits = inputs.flatten(1) @ weight.T
    maps = input_gradient_maps(logits[:, 0], inputs)
    assert torch.allclose(maps, torch.full((1, 1, 4, 4), 3.0))  # |1| + |-2|
    maps.sum().backward()  # second order: the weights receive a gradient through the map
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_gradcam_maps_by_hand():
    activations = torch.zeros(1, 2, 2, 2)
    activations[0, 0, 0, 0], activations[0, 1, 1, 1] = 2.0, 3.0
    activations.requires_grad_()
    head = torch.tensor([4.0, -1.0])  # score = 4 * mean(A_0) - mean(A_1): dS/dA_k = head_k / 4 at each position
    score = (activations.mean(dim=(2, 3)) * head).sum(dim=1)
    cam = gradcam_maps(score, activations)
    # weights 1 and -1/4: ReLU(1 * A_0 - A_1 / 4) = 2 at (0, 0), 0 elsewhere (-3/4 clipped)
    assert cam.detach().squeeze().tolist() == [[2.0, 0.0], [0.0, 0.0]]


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def _train_one_iteration(method: str, weight: float, region_source: str = "ground_truth", margin: int = 0):
    torch.manual_seed(0)
    network = TinyClassifier()
    segmenter = nn.Conv2d(1, 2, 1)  # its region: wherever channel 1's logit beats channel 0's
    images = torch.rand(4, 1, 8, 8)
    masks = torch.zeros(4, 1, 8, 8)
    masks[:, :, 2:6, 2:6] = 1
    data = [{"image": images, "label": torch.tensor([0, 1, 0, 1]), "mask": masks}]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1), loss_function=nn.CrossEntropyLoss(), decollate=False,
    )
    guidance = ExplanationGuidance(network, method, weight, region_source, margin, "mask", segmenter, target_layer="features.1")
    guidance.attach(trainer)
    seen = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.update(loss=e.state.output["loss"].item(), guidance=e.state.output["guidance"].item()))
    trainer.run()
    return network, seen, segmenter


@pytest.mark.parametrize("method", ["input_gradient", "gradcam"])
def test_handler_adds_the_weighted_term_to_the_loss_and_changes_the_update(method):
    plain, plain_seen, _ = _train_one_iteration(method, 0.0)
    guided, guided_seen, _ = _train_one_iteration(method, 10.0)
    assert plain_seen["guidance"] == pytest.approx(guided_seen["guidance"]) and guided_seen["guidance"] > 0
    assert guided_seen["loss"] == pytest.approx(plain_seen["loss"] + 10.0 * guided_seen["guidance"], rel=1e-5)
    assert not torch.equal(plain.features[0].weight, guided.features[0].weight)
    assert not any(h for h in guided.features[1]._forward_hooks.values())  # the Grad-CAM hook is gone


def test_handler_options_change_the_term_and_the_segmenter_stays_frozen():
    _, ground_truth, _ = _train_one_iteration("input_gradient", 1.0)
    _, grown, _ = _train_one_iteration("input_gradient", 1.0, margin=2)
    _, from_segmenter, segmenter = _train_one_iteration("input_gradient", 1.0, region_source="segmenter")
    assert grown["guidance"] < ground_truth["guidance"]
    assert from_segmenter["guidance"] != pytest.approx(ground_truth["guidance"])
    assert all(not p.requires_grad and p.grad is None for p in segmenter.parameters())


@pytest.mark.parametrize(("option", "value", "key"), [("method", "gradCAM", "guidance"), ("region_source", "atlas", "guidance_region"),
                                                      ("weight", -1.0, "guidance_weight"), ("margin", 1.5, "guidance_margin")])
def test_handler_refuses_bad_options_naming_the_key(option, value, key):
    options = {"method": "gradcam", "weight": 1.0, "region_source": "ground_truth", "margin": 0, option: value}
    with pytest.raises(ValueError, match=key):
        ExplanationGuidance(TinyClassifier(), target_layer="features.1", **options)


def _weights(path):
    return {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True).items() if isinstance(v, torch.Tensor)}


def test_guided_bundle_training_runs_resumes_and_changes_the_classifier(ham_dir, tmp_path, trained_ham_bundle):
    root = tmp_path / "guided"
    (root / "models").mkdir(parents=True)
    shutil.copy(trained_ham_bundle / "models" / "segmenter.pt", root / "models" / "segmenter.pt")
    guided = run_workflow(ham_workflow(root, ham_dir, TRAIN_CLASSIFIER, guidance="gradcam", guidance_weight=5.0))
    assert len(guided.parser.get_parsed_content("extra_train_handlers")) == 1
    # the same seed, data and epochs as the fixture's plain classifier: only the guidance term differs
    guided_weights, plain_weights = _weights(root / "models" / "model.pt"), _weights(trained_ham_bundle / "models" / "model.pt")
    assert guided_weights.keys() == plain_weights.keys()
    assert any(not torch.equal(guided_weights[k], v) for k, v in plain_weights.items())
    seen = []
    # resumed: a second run to two epochs trains the second epoch only
    resumed = ham_workflow(root, ham_dir, TRAIN_CLASSIFIER, guidance="gradcam", guidance_weight=5.0, max_epochs=2)
    resumed.initialize()
    trainer = resumed.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.output["guidance"].item())))
    resumed.run()
    assert {epoch for epoch, _ in seen} == {2} and all(g >= 0 for _, g in seen)


def test_guided_chest_training_with_ground_truth_lungs(chest_dir, tmp_path):
    workflow = run_workflow(chest_workflow(tmp_path, chest_dir, TRAIN_CLASSIFIER, guidance="input_gradient", guidance_region="ground_truth"))
    batch = workflow.parser.get_parsed_content("train#dataset")[0]
    # the lungs, resampled with the image by the augmentation (the handler takes > 0.5)
    assert tuple(batch["lung_mask"].shape) == (1, 64, 64) and batch["lung_mask"].min() >= 0 and batch["lung_mask"].max() == 1
    assert workflow.parser.get_parsed_content("augmented_keys") == ["image", "lung_mask"]


GUIDE_BY_SEGMENTER = [*TRAIN_CLASSIFIER, "guide_by_segmenter.yaml"]


def test_guided_bundle_training_with_the_frozen_segmenters_regions(ham_dir, tmp_path, trained_ham_bundle):
    root = tmp_path / "by_segmenter"
    (root / "models").mkdir(parents=True)
    shutil.copy(trained_ham_bundle / "models" / "segmenter.pt", root / "models" / "segmenter.pt")
    before = _weights(root / "models" / "segmenter.pt")
    workflow = ham_workflow(root, ham_dir, GUIDE_BY_SEGMENTER, guidance_weight=5.0)
    workflow.initialize()
    guidance = workflow.parser.get_parsed_content("extra_train_handlers")[-1]
    assert guidance.region_source == "segmenter" and workflow.parser.get_parsed_content("load_region") == []
    seen = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: seen.append(e.state.output["guidance"].item()))
    workflow.run()
    # the trained segmenter was loaded (not its random initialisation) and left as it was
    segmenter = {k: v.cpu() for k, v in guidance.segmenter.state_dict().items()}
    assert all(torch.equal(segmenter[k], v) for k, v in before.items() if k in segmenter)
    assert all(not p.requires_grad for p in guidance.segmenter.parameters())
    assert seen and all(g >= 0 for g in seen) and any(g > 0 for g in seen)
    guided, plain = _weights(root / "models" / "model.pt"), _weights(trained_ham_bundle / "models" / "model.pt")
    assert any(not torch.equal(guided[k], v) for k, v in plain.items())


def test_segmenter_regions_need_their_overlay_and_guidance(ham_dir, tmp_path):
    for folder, configs, overrides, expected in (
        ("a", TRAIN_CLASSIFIER, {"guidance": "gradcam", "guidance_region": "segmenter"}, "compose configs/guide_by_segmenter.yaml"),
        ("b", GUIDE_BY_SEGMENTER, {"guidance": "none"}, "guidance: expected one of input_gradient, gradcam"),
    ):
        with pytest.raises(Exception) as raised:
            ham_workflow(tmp_path / folder, ham_dir, configs, **overrides).initialize()
        assert expected in str(root_cause(raised.value))
