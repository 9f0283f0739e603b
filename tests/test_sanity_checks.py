"""Sanity checks of the maps: Spearman and SSIM, deletion/insertion, the randomisation cascade (hand-worked cases), the
handler on a tiny evaluator writing sanity.json, and the report section reading it."""

import json
import math

import pytest
import torch
from ignite.engine import Engine
from monai.networks.nets import DenseNet121, resnet50
from torch import nn

from segx_monai.explainers import GradCAM
from segx_monai.handlers.contract import CERTAINTY_SCORES
from segx_monai.handlers.sanity import SanityChecks
from segx_monai.handlers.segx import ExplainPredictions, SegUScores, SegXMaps
from segx_monai.metrics.sanity import cascade_layers, deletion_insertion, map_ssim, randomized_cascade, spearman_correlation
from segx_monai.networks.patchnet import PatchNet
from segx_monai.report.sanity import sanity_section

SIZE = 16  # SSIM's 11-pixel window needs at least this much


def test_spearman_gives_ties_their_average_rank_and_nan_for_a_constant_map():
    a = torch.tensor([[0.0, 0.0], [1.0, 2.0]]).view(1, 1, 2, 2)
    b = torch.tensor([[1.0, 0.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    # ranks a: 1.5 1.5 3 4, b: 2 1 3 4; centred: (-1 -1 .5 1.5), (-.5 -1.5 .5 1.5): 4.5 / sqrt(4.5 * 5)
    rho = spearman_correlation(torch.cat([a, a, torch.ones_like(a)]), torch.cat([b, a, b]))
    assert rho[:2].tolist() == pytest.approx([4.5 / math.sqrt(4.5 * 5), 1.0])
    assert math.isnan(rho[2])
    # without the last pixel: ranks a 1.5 1.5 3, b 2 1 3; centred (-.5 -.5 1), (0 -1 1): 1.5 / sqrt(1.5 * 2)
    inside = torch.tensor([[True, True], [True, False]]).view(1, 1, 2, 2)
    assert spearman_correlation(a, b, inside).item() == pytest.approx(1.5 / math.sqrt(3))


def test_ssim_is_one_for_the_same_map_at_any_scale():
    a = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert map_ssim(a, 3 * a + 1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert map_ssim(torch.zeros(1, 1, SIZE, SIZE), torch.ones(1, 1, SIZE, SIZE)).item() == pytest.approx(1.0)  # constant maps
    assert map_ssim(a[:1], a[1:]).item() < 0.5
    with pytest.raises(ValueError, match="at least 11 pixels"):
        map_ssim(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


WEIGHTS = torch.tensor([[4.0, 3.0], [2.0, 1.0]])


def linear_score(calls: list):
    def score(x):
        calls.append(x.shape[0])
        return (x[:, 0] * WEIGHTS).sum(dim=(1, 2))
    return score


def test_deletion_and_insertion_of_a_linear_score_on_a_2x2_image():
    images = torch.ones(2, 1, 2, 2)
    # sample 0: order pixel 1 (0.9), the tied 2 and 3 in raster order, then pixel 0; sample 1: a 1x2 map upsampled to
    # [[0.9, 0.1], [0.9, 0.1]]: pixels 0, 2, 1, 3
    maps = torch.stack([torch.tensor([[[0.1, 0.9], [0.5, 0.5]]]), torch.tensor([[[0.9, 0.1], [0.9, 0.1]]])])
    calls = []
    result = deletion_insertion(linear_score(calls), images, maps, n_steps=4, deletion_baseline=0.0, insertion_baseline=0.5)
    assert result.fractions.tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert result.deletion.tolist() == [[10, 7, 5, 4, 0], [10, 6, 4, 1, 0]]
    # insertion from 0.5 everywhere (score 5): each revealed pixel adds half its weight
    assert result.insertion.tolist() == [[5, 6.5, 7.5, 8, 10], [5, 7, 8, 9.5, 10]]
    assert result.deletion_auc.tolist() == pytest.approx([0.25 * (8.5 + 6 + 4.5 + 2), 0.25 * (8 + 5 + 2.5 + 0.5)])
    assert result.insertion_auc.tolist() == pytest.approx([0.25 * (5.75 + 7 + 7.75 + 9), 0.25 * (6 + 7.5 + 8.75 + 9.75)])
    assert calls == [2] * 10  # one call per step and curve, on the whole batch
    halves = deletion_insertion(linear_score([]), images[:1], maps[:1], n_steps=2, insertion_baseline=0.5)
    assert halves.deletion.tolist() == [[10, 5, 0]] and halves.deletion_auc.item() == pytest.approx(5.0)
    assert halves.insertion_auc.item() == pytest.approx(7.5)


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_cascade_layers_of_the_bundles_classifiers():
    dense = DenseNet121(spatial_dims=2, in_channels=3, out_channels=2)
    assert cascade_layers(dense) == [
        "class_layers.out", "features.norm5", "features.denseblock4", "features.transition3", "features.denseblock3",
        "features.transition2", "features.denseblock2", "features.transition1", "features.denseblock1", "features.norm0",
        "features.conv0",
    ]
    # a PatchNet is looked through: its backbone's blocks, not one `backbone` block
    assert cascade_layers(PatchNet(dense, grid=2)) == [f"backbone.{name}" for name in cascade_layers(dense)]
    layers = cascade_layers(resnet50(spatial_dims=2, n_input_channels=3, num_classes=2))
    assert layers[:3] == ["fc", "layer4.2", "layer4.1"] and layers[-3:] == ["layer1.0", "bn1", "conv1"] and len(layers) == 19


def test_the_cascade_reinitialises_exactly_the_layers_so_far_and_leaves_the_network_untouched():
    net = tiny_net()
    hook = net[3].register_forward_hook(lambda *args: None)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    steps = list(randomized_cascade(net, seed=3))
    assert [name for name, _ in steps] == ["6", "2", "0"] == cascade_layers(net)
    for k, (_, copy) in enumerate(steps):
        changed = {name.split(".")[0] for name, value in copy.state_dict().items() if not torch.equal(value, before[name])}
        assert changed == {"6", "2", "0"}.intersection(["6", "2", "0"][: k + 1])
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert list(net[3]._forward_hooks) == [hook.id] and torch.equal(torch.get_rng_state(), rng)
    again, other = list(randomized_cascade(net, seed=3)), list(randomized_cascade(net, ["2"], seed=4))
    assert torch.equal(again[0][1][6].weight, steps[0][1][6].weight)
    assert not torch.equal(other[0][1][2].weight, steps[1][1][2].weight)
    with pytest.raises(ValueError, match=r"\['head'\] are not modules of Sequential"):
        randomized_cascade(net, ["head"])


REGION = torch.zeros(1, SIZE, SIZE)
REGION[:, :, : SIZE // 2] = 0.9  # the region: the left half


def run_sanity(tmp_path, name: str, multi_label: bool = False, **options) -> dict:
    """A tiny evaluator (3 images of 16x16) with ExplainPredictions, SegXMaps, SegUScores and SanityChecks."""
    net = tiny_net()
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

    def step(engine, batch):
        with torch.no_grad():
            probs = net(torch.stack([item["image"] for item in batch]))
        probs = probs.sigmoid() if multi_label else probs.softmax(dim=1)
        return [{"image": item["image"], "pred": p, "region_prob": REGION} for item, p in zip(batch, probs)]

    handlers = [ExplainPredictions(GradCAM(net, "3"), ["a", "b"], multi_label=multi_label, thresholds=0.0),
                SegXMaps(q=0.25), SegUScores(q=0.25, n_thresholds=11)]
    sanity = SanityChecks(tmp_path / name, lambda network: GradCAM(network, "3"), handlers, **options)
    engine = Engine(step)
    for handler in [*handlers, sanity]:
        handler.attach(engine)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    engine.run([[{"image_id": f"i{n}", "image": images[n]} for n in (0, 1)], [{"image_id": "i2", "image": images[2]}]], max_epochs=1)
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    return json.loads((tmp_path / name).read_text())


def test_the_handler_writes_finite_checks_and_every_option_changes_them(tmp_path):
    base = run_sanity(tmp_path, "base.json", n_samples=3, n_steps=4)
    assert base["n_pairs"] == 3 and [p["image_id"] for p in base["pairs"]] == ["i0", "i1", "i2"]
    assert [s["layer"] for s in base["cascade"]] == ["6", "2", "0"]
    for step in base["cascade"]:
        for kind in ("raw", "segx"):
            ssim = step["similarity"][kind]["ssim"]
            assert ssim["n"] == 3 and math.isfinite(ssim["mean"]) and ssim["ci"][0] <= ssim["mean"] <= ssim["ci"][1]
        assert step["similarity"]["segx"]["spearman_in_region"]["n"] >= 1
        assert set(step["segu"]) == set(CERTAINTY_SCORES) and all(math.isfinite(v["mean"]) for v in step["segu"].values())
    for test in ("deletion", "insertion"):
        assert base[test]["fractions"] == [0, 0.25, 0.5, 0.75, 1] and len(base[test]["raw"]["curve"]) == 5
        assert 0 <= base[test]["raw"]["auc"]["mean"] <= 1 and math.isfinite(base[test]["difference"]["mean"])
    # the curves start at the trained classifier's probability of the explained class on the intact image
    assert base["deletion"]["raw"]["curve"][0] == pytest.approx(base["insertion"]["raw"]["curve"][-1])

    assert run_sanity(tmp_path, "two.json", n_samples=2, n_steps=4)["n_pairs"] == 2
    assert len(run_sanity(tmp_path, "steps.json", n_samples=3, n_steps=2)["deletion"]["raw"]["curve"]) == 3
    seeded = run_sanity(tmp_path, "seed.json", n_samples=3, n_steps=4, seed=1)
    assert seeded["cascade"][0]["similarity"]["raw"]["ssim"] != base["cascade"][0]["similarity"]["raw"]["ssim"]
    assert [s["layer"] for s in run_sanity(tmp_path, "layers.json", n_samples=3, n_steps=4, layers=["6", "0"])["cascade"]] == ["6", "0"]
    sigmoid = run_sanity(tmp_path, "multi.json", multi_label=True, n_samples=3, n_steps=4)
    assert sigmoid["settings"]["multi_label"] and sigmoid["deletion"]["raw"]["curve"] != base["deletion"]["raw"]["curve"]

    with pytest.raises(ValueError, match=r"layers \['head'\] are not modules of Sequential"):
        SanityChecks(tmp_path / "bad.json", GradCAM, [ExplainPredictions(GradCAM(tiny_net(), "3"), ["a", "b"]), SegXMaps(),
                                                      SegUScores()], layers=["head"])

    html = sanity_section(base)
    assert "Sanity checks: model-parameter randomisation" in html and "Deletion AUC, SegX − raw" in html
    assert html.count("<table>") == 3 and html.count("<img") == 3


def estimate(mean, low, high, n=10):
    return {"mean": mean, "ci": [low, high], "n": n}


def test_the_section_says_whether_maps_depend_on_the_model_and_keep_its_evidence():
    similarity = {"raw": {"spearman": estimate(0.1, 0.0, 0.2), "ssim": estimate(0.3, 0.2, 0.4)},
                  "segx": {"spearman": estimate(0.7, 0.6, 0.8), "ssim": estimate(0.9, 0.8, 1.0),
                           "spearman_in_region": estimate(0.2, None, None, n=1)}}
    segu = {score: estimate(0.5, 0.4, 0.6) for score in CERTAINTY_SCORES}
    curve = {"auc": estimate(0.4, 0.3, 0.5), "curve": [0.9, 0.5, 0.1]}
    sanity = {
        "settings": {"n_samples": 10, "n_steps": 2, "seed": 0, "n_bootstrap": 1000}, "n_pairs": 10, "trained_segu": segu,
        "cascade": [{"step": 1, "layer": "fc", "similarity": similarity, "segu": segu}],
        "deletion": {"fractions": [0, 0.5, 1], "raw": curve, "segx": curve, "difference": estimate(0.1, 0.05, 0.15)},
        "insertion": {"fractions": [0, 0.5, 1], "raw": curve, "segx": curve, "difference": estimate(0.0, -0.1, 0.1)},
    }
    html = sanity_section(sanity)
    assert "Raw maps depend on the model: with every listed layer re-initialised (down to fc) their rank correlation with the trained maps is 0.100 [0.000, 0.200], below 0.500" in html
    assert "Whole SegX maps may not depend on the model" in html and "In-region SegX maps depend on the model" in html
    assert "Deletion AUC, SegX − raw: 0.100 [0.050, 0.150]. The interval lies above 0: SegX ranks the model&#x27;s evidence later" in html
    assert "Insertion AUC, SegX − raw: 0.000 [-0.100, 0.100]. The interval contains 0" in html
    assert "not run" in sanity_section({"n_pairs": 0})
