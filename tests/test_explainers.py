"""Tests of segx_monai.explainers: exactness against direct computations, batching, model safety."""

from __future__ import annotations

import captum.attr
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.networks.nets import DenseNet121, ResNet
from torch import nn

from segx_monai.explainers import (
    COUNTERFACTUAL,
    EXPLAINERS,
    Counterfactual,
    EigenCAM,
    GradCAM,
    GradCAMpp,
    GradientShap,
    build_baselines,
    default_target_layer,
    explain_positive_classes,
    get_explainer,
    load_baselines,
    principal_projection,
    save_baselines,
)
from conftest import REPO
from segx_monai.bundle.errors import root_cause
from segx_monai.explainers.attribution import saved_activation_bytes
from segx_monai.explainers.base import explaining
from segx_monai.networks import PatchNet
from segx_monai.networks.counterfactual import build_generator

N_CLASSES = 3
MODES = {2: "bilinear", 3: "trilinear"}


class TinyNet(nn.Module):
    """conv-BN-ReLU(inplace)-conv-ReLU(inplace) -> mean -> dropout -> linear; can raise after the forward."""

    def __init__(self, dims: int = 2, in_channels: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.features = nn.Sequential(
            conv(in_channels, 4, 3, padding=1), norm(4), nn.ReLU(inplace=True),
            conv(4, 6, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(6, N_CLASSES)
        self.fail = False
        with torch.no_grad():
            self.features[1].running_mean.uniform_(-0.5, 0.5)
            self.features[1].running_var.uniform_(0.5, 2.0)

    def from_layer(self, a: torch.Tensor, k: int) -> torch.Tensor:
        """Logits from the output ``a`` of ``features[k - 1]``."""
        return self.head(self.dropout(self.features[k:](a).flatten(2).mean(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.from_layer(x, 0)
        if self.fail:
            raise RuntimeError("boom")
        return logits


def make_net(dims: int = 2) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(dims)


def make_net_for(name: str) -> nn.Module:
    """The tiny net an explainer takes: a 2x2 PatchNet of it for ``patch_logits``, which explains PatchNets only."""
    return PatchNet(make_net(), grid=2) if name == "patch_logits" else make_net()


def make_inputs(batch: int = 4, dims: int = 2, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, 2, *[size] * dims, generator=torch.Generator().manual_seed(1))


def input_size(name: str) -> int:
    """16 px, or 32 for the counterfactual generator's four halvings (instance norm needs more than one pixel)."""
    return 32 if name == "counterfactual" else 16


def small_kwargs(name: str) -> dict:
    """Cheap settings per registered explainer for the tiny net."""
    return {
        "gradcam": {"target_layer": "features.2"},
        "gradcampp": {"target_layer": "features.2"},
        "eigencam": {"target_layer": "features.2"},
        "gradient_shap": {"baselines": make_inputs(5, size=16) * 0.5, "n_samples": 12, "memory_mb": 0.3},
        "integrated_gradients": {"n_steps": 12, "chunk_size": 5},
        "occlusion": {"window": 4, "stride": 4},
        "patch_logits": {"shifts": 2},
        "counterfactual": {"generator": make_generator(), "target": [1.0, 0.0, 0.0], "scale": 0.25},
    }[name]


def make_generator() -> nn.Module:
    """A tiny counterfactual generator for TinyNet's 2-channel inputs whose last layer is random, not the identity."""
    torch.manual_seed(3)
    generator = build_generator(2, N_CLASSES, low=-3.0, high=3.0, features=(4, 4, 4, 4, 4, 4))
    nn.init.normal_(generator.unet.final_conv.weight, std=0.5)
    return generator


def direct_cam(net: TinyNet, x: torch.Tensor, targets: list[int], k: int, plus_plus: bool) -> torch.Tensor:
    """Grad-CAM / Grad-CAM++ one sample at a time from the textbook formulas, A = output of features[k - 1]."""
    net.eval()
    dims = tuple(range(2, x.ndim))
    maps = []
    for i, target in enumerate(targets):
        a = net.features[:k](x[i : i + 1]).detach().requires_grad_()
        # clone: the next op may be in place
        (g,) = torch.autograd.grad(net.from_layer(a.clone(), k)[0, target], a)
        if plus_plus:
            alpha = g**2 / (2 * g**2 + a.sum(dims, keepdim=True) * g**3)
            alpha = torch.where(g == 0, torch.zeros_like(alpha), alpha)
            w = (alpha * g.clamp(min=0)).sum(dims, keepdim=True)
        else:
            w = g.mean(dims, keepdim=True)
        cam = (w * a).sum(1, keepdim=True).clamp(min=0).detach()
        cam = F.interpolate(cam, size=x.shape[2:], mode=MODES[len(dims)], align_corners=False)
        maps.append((cam - cam.min()) / (cam.max() - cam.min()))
    return torch.cat(maps)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("k", [2, 3])  # batch-norm output (then overwritten by an in-place ReLU), in-place ReLU
@pytest.mark.parametrize("cls, plus_plus", [(GradCAM, False), (GradCAMpp, True)])
def test_cam_matches_direct_computation(cls, plus_plus, k, dims):
    net, x = make_net(dims), make_inputs(3, dims, size=12)
    targets = [0, 2, 1]
    maps = cls(net, target_layer=net.features[k - 1])(x, torch.tensor(targets))
    assert maps.shape == (3, 1, *x.shape[2:])
    torch.testing.assert_close(maps, direct_cam(net, x, targets, k, plus_plus), atol=1e-5, rtol=1e-4)


def test_targets_none_int_and_tensor():
    net, x = make_net(), make_inputs()
    cam = GradCAM(net, "features.2")
    net.eval()
    predicted = net(x).argmax(1)
    torch.testing.assert_close(cam(x), cam(x, predicted))
    torch.testing.assert_close(cam(x, 2), cam(x, torch.full((4,), 2)))
    torch.testing.assert_close(cam(x, [0, 1, 2, 0]), cam(x, torch.tensor([0, 1, 2, 0])))
    with pytest.raises(ValueError, match="shape"):
        cam(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="targets must lie"):
        cam(x, N_CLASSES)


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_batched_equals_single(name):
    net, x = make_net_for(name), make_inputs(size=input_size(name))
    explainer = get_explainer(name, net, **small_kwargs(name))
    for targets in (None, torch.tensor([2, 0, 1, 1])):
        batched = explainer(x, targets)
        per_sample = [None] * 4 if targets is None else targets.split(1)
        singles = torch.cat([explainer(x[i : i + 1], per_sample[i]) for i in range(4)])
        assert batched.shape == (4, 1, *x.shape[2:])
        torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-4)
        assert batched.amin() >= 0 and batched.amax() <= 1
        if explainer.min_max:
            assert torch.allclose(batched.flatten(1).amax(1), torch.ones(4))


def _snapshot(net: nn.Module) -> dict:
    return {
        "params": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in net.named_parameters()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in net.named_parameters()},
        "training": {k: m.training for k, m in net.named_modules()},
        "inplace": {k: m.inplace for k, m in net.named_modules() if hasattr(m, "inplace")},
    }


def _assert_untouched(net: nn.Module, before: dict) -> None:
    after = _snapshot(net)
    for key in ("requires_grad", "training", "inplace"):
        assert after[key] == before[key], key
    for group in ("params", "grads"):
        for k, v in before[group].items():
            assert (v is None and after[group][k] is None) or torch.equal(v, after[group][k]), (group, k)
    for module in net.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(module, hooks), hooks
    for p in net.parameters():
        assert not p._backward_hooks and not getattr(p, "_post_accumulate_grad_hooks", None)
    assert not nn.modules.module._global_forward_hooks and not nn.modules.module._global_backward_hooks


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_model_and_input_left_untouched(name):
    net, x = make_net_for(name), make_inputs(size=input_size(name))
    tiny = getattr(net, "backbone", net)
    net.train()
    tiny.features[1].eval()  # a frozen batch-norm inside a training model
    tiny.head.bias.requires_grad_(False)
    for p in net.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    before, x_before = _snapshot(net), x.clone()
    explainer = get_explainer(name, net, **small_kwargs(name))
    with torch.no_grad():  # e.g. inside an evaluation loop
        maps = explainer(x)
    assert torch.isfinite(maps).all()
    _assert_untouched(net, before)
    assert torch.equal(x, x_before) and not x.requires_grad

    if name == "counterfactual":  # never runs the classifier: test_counterfactual_map_by_hand checks its generator
        return
    tiny.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        explainer(x, 1)
    _assert_untouched(net, before)
    assert torch.equal(x, x_before)


class FailingGenerator(nn.Module):
    """Wraps a generator; raises after its forward pass when ``fail`` is set."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator, self.fail = generator, False

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        out = self.generator(x, condition)
        if self.fail:
            raise RuntimeError("boom")
        return out


def test_counterfactual_map_by_hand():
    """|X - G(X)| x std, channel mean, clipped to [0, 1], not min-max normalised; the generator is left as found,
    even when it raises; extras() are the last call's counterfactuals; an identity generator gives zero maps."""
    net, x = make_net(), make_inputs(size=32)
    generator = FailingGenerator(make_generator())
    generator.train()
    before = _snapshot(generator)
    explainer = Counterfactual(net, generator, target=[1.0, 0.0, 0.0], scale=[0.25, 0.5])
    maps = explainer(x, 2)
    with torch.no_grad():
        cf = generator.eval()(x, torch.tensor([[1.0, 0.0, 0.0]]).expand(4, -1))
    generator.train()
    expected = (((x - cf).abs() * torch.tensor([0.25, 0.5]).view(1, 2, 1, 1)).mean(1, keepdim=True)).clamp(0, 1)
    torch.testing.assert_close(maps, expected)
    assert 0 < maps.amax() < 1  # kept on its own scale
    torch.testing.assert_close(explainer.extras()[COUNTERFACTUAL], cf)
    _assert_untouched(generator, before)
    generator.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        explainer(x)
    _assert_untouched(generator, before)
    identity = build_generator(2, N_CLASSES, low=-10.0, high=10.0, features=(4, 4, 4, 4, 4, 4))  # zero last layer
    assert torch.equal(Counterfactual(net, identity, [1.0, 0.0, 0.0])(x), torch.zeros(4, 1, 32, 32))


@pytest.mark.parametrize("name", list(EXPLAINERS))
@pytest.mark.parametrize("value", [0.0, 0.5])
def test_constant_inputs_give_finite_maps(name, value):
    net = make_net_for(name)
    maps = get_explainer(name, net, **small_kwargs(name))(torch.full((2, 2, input_size(name), input_size(name)), value))
    assert torch.isfinite(maps).all() and maps.amin() >= 0 and maps.amax() <= 1


def test_zero_attribution_gives_zero_map():
    net = make_net()
    maps = GradientShap(net, "zeros", n_samples=4)(torch.zeros(2, 2, 16, 16))
    assert torch.equal(maps, torch.zeros_like(maps))


def test_default_target_layer_monai_densenet_and_resnet():
    densenet = DenseNet121(
        spatial_dims=2, in_channels=1, out_channels=N_CLASSES, init_features=8, growth_rate=4, block_config=(2, 2)
    )
    resnet = ResNet("basic", [1, 1, 1, 1], [4, 8, 8, 8], spatial_dims=2, n_input_channels=1, num_classes=N_CLASSES)
    assert default_target_layer(densenet) is densenet.class_layers.relu
    assert default_target_layer(resnet) is resnet.layer4
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    for net, name in ((densenet, "class_layers.relu"), (resnet, "layer4")):
        maps = GradCAM(net)(x, torch.tensor([0, 2]))
        assert maps.shape == (2, 1, 32, 32) and torch.allclose(maps.flatten(1).amax(1), torch.ones(2))
        torch.testing.assert_close(maps, GradCAM(net, name)(x, torch.tensor([0, 2])))
    with pytest.raises(ValueError, match="target_layer"):
        default_target_layer(make_net())


class LayerNet(nn.Module):
    """Logits = channel means of the input, which passes through the layer ``act`` unchanged: its activations are the input."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x).flatten(2).mean(2)


@pytest.mark.parametrize("direction, sign", [((1.0, 2.0, -1.0), 1.0), ((1.0, -2.0, -1.0), -1.0)])
def test_eigencam_of_one_direction_by_hand(direction, sign):
    """Activations c * d + offsets on a 4x4 map: the centred first component is d / |d|, the projection
    |d| (c - mean c), with the sign of the channel sum's correlation with c (sum(d) > 0: +, < 0: -)."""
    c = torch.arange(16.0).view(4, 4) ** 1.5
    d = torch.tensor(direction)
    activations = (d[:, None, None] * c + torch.tensor([0.5, -3.0, 7.0])[:, None, None])[None]
    expected = sign * d.norm() * (c - c.mean())
    torch.testing.assert_close(principal_projection(activations), expected[None, None], atol=1e-4, rtol=1e-5)
    relu = expected.clamp(min=0)
    torch.testing.assert_close(EigenCAM(LayerNet(), "act")(activations), ((relu - relu.min()) / (relu.max() - relu.min()))[None, None])


def test_eigencam_equals_a_numpy_svd():
    """A batch of random 4x4, 5-channel activations against numpy's SVD of each centred (16, 5) matrix."""
    activations = torch.randn(3, 5, 4, 4, generator=torch.Generator().manual_seed(3))
    expected = []
    for a in activations.numpy().astype(np.float64):
        positions = a.reshape(5, 16).T
        centred = positions - positions.mean(axis=0)
        projection = centred @ np.linalg.svd(centred)[2][0]
        projection *= np.sign(np.corrcoef(projection, positions.sum(axis=1))[0, 1])
        cam = np.maximum(projection, 0)
        expected.append(((cam - cam.min()) / (cam.max() - cam.min())).reshape(1, 4, 4))
    maps = EigenCAM(LayerNet(), "act")(activations, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(maps, torch.from_numpy(np.stack(expected)).float(), atol=1e-4, rtol=1e-4)  # float32 SVD
    # class-agnostic: the targets are ignored
    torch.testing.assert_close(EigenCAM(LayerNet(), "act")(activations, 4), maps)


def test_gradcam_3d_densenet():
    net = DenseNet121(
        spatial_dims=3, in_channels=1, out_channels=N_CLASSES, init_features=4, growth_rate=4, block_config=(1, 1)
    )
    maps = GradCAMpp(net)(torch.randn(2, 1, 16, 16, 16), 1)
    assert maps.shape == (2, 1, 16, 16, 16) and torch.isfinite(maps).all()


def row_mb(net: nn.Module, x: torch.Tensor) -> float:
    """MB of autograd memory one image of ``x`` takes through ``net`` in eval mode (GradientShap's unit of budget)."""
    with explaining(net):
        return saved_activation_bytes(net, x[:1]) / 2**20


@pytest.mark.parametrize("stdevs", [0.0, 0.3])
def test_gradient_shap_chunking_is_exact(stdevs):
    net, x = make_net(), make_inputs(3)
    refs = make_inputs(6) * 0.5
    targets = torch.tensor([0, 1, 2])
    mb = row_mb(net, x)
    def shap(rows: int, seed: int = 7) -> torch.Tensor:
        return GradientShap(net, refs, n_samples=20, stdevs=stdevs, memory_mb=(rows + 0.5) * mb, seed=seed)(x, targets)

    unchunked = shap(3 * 20)
    for rows in (2, 7, 50):  # passes that split the batch, split draws, and hold all but a few rows
        torch.testing.assert_close(shap(rows), unchunked, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(shap(60, seed=8), unchunked)


def test_gradient_shap_passes_fit_the_memory_budget():
    """Rows per pass = budget // (MB of one image), whatever n_samples; the first forward (1 row, on the meta device)
    counts it: conv1's input, BN's input and the two ReLU outputs (conv2 reads ReLU1's), one image's, not its batch's."""
    net, x, refs = make_net(), make_inputs(3), make_inputs(5)
    mb = row_mb(net, x)
    assert mb * 2**20 == pytest.approx(4 * (2 * 16 * 16 + 4 * 16 * 16 + 4 * 16 * 16 + 6 * 8 * 8), rel=0.01)

    def pass_sizes(budget: float, n_samples: int, x: torch.Tensor = x, refs: torch.Tensor = refs) -> list[int]:
        sizes = []
        handle = net.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
        try:
            GradientShap(net, refs, n_samples=n_samples, memory_mb=budget * mb)(x, torch.tensor([0, 1, 2]))
        finally:
            handle.remove()
        return sizes

    assert pass_sizes(8.5, 50) == [1] + [8] * 18 + [6]  # 150 rows: 18 passes of 8 and one of 6
    assert pass_sizes(25.9, 50) == [1] + [25] * 6
    assert pass_sizes(8.5, 100) == [1] + [8] * 37 + [4]
    # 32 x 32 images keep 4 times the memory: 2 rows per pass in the same budget
    big, big_refs = make_inputs(3, size=32), make_inputs(5, size=32)
    assert row_mb(net, big) == pytest.approx(4 * mb, rel=0.01)
    assert pass_sizes(8.5, 10, big, big_refs) == [1] + [2] * 15


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), "1024", True])
def test_gradient_shap_invalid_budget_names_the_key(budget):
    with pytest.raises(ValueError, match="shap_memory_mb"):
        GradientShap(make_net(), "zeros", memory_mb=budget)


def test_gradient_shap_budget_below_one_image_names_the_key():
    net, x = make_net(), make_inputs(2)
    with pytest.raises(ValueError, match=r"shap_memory_mb\) = .* below the .* one image of shape \(2, 16, 16\)"):
        GradientShap(net, "zeros", memory_mb=row_mb(net, x) / 2)(x, 0)


@pytest.mark.parametrize("bundle", ["ham_segx", "chestx_segx"])
def test_the_bundles_pass_shap_memory_mb_to_gradient_shap(bundle):
    def explainer(memory_mb):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.yaml"))
        parser.update({"explainer_name": "gradient_shap", "explainer_options#gradient_shap#baselines": "zeros",
                       "shap_memory_mb": memory_mb})  # no trained bundle, so no saved reference set
        return parser.get_parsed_content("explainer")

    assert explainer(300).memory_mb == 300
    with pytest.raises(Exception) as info:
        explainer(0)
    assert "shap_memory_mb" in str(root_cause(info.value))


def test_gradient_shap_equals_captum_for_the_same_draws(monkeypatch):
    """Feed captum's GradientShap the draws of ours (captum takes them from np.random) and compare."""
    net, x, refs = make_net().eval(), make_inputs(2), make_inputs(5)
    targets = torch.tensor([2, 0])
    index, alpha = np.array([3, 0, 4, 4, 1, 2]), np.array([0.1, 0.9, 0.5, 0.33, 0.75, 0.2])

    class FixedDraws(GradientShap):
        def _draw(self, n_references, generator):
            return torch.from_numpy(index), torch.from_numpy(alpha).float()

    ours = FixedDraws(net, refs, n_samples=6, memory_mb=4.5 * row_mb(net, x)).attribute_inputs(x, targets)
    # captum lays rows out as (sample, draw) and draws per row
    monkeypatch.setattr(np.random, "choice", lambda n, size: np.tile(index, 2))
    monkeypatch.setattr(np.random, "uniform", lambda low, high, size: np.tile(alpha, 2))
    theirs = captum.attr.GradientShap(net).attribute(x, refs, n_samples=6, stdevs=0.0, target=targets)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_explain_positive_classes_one_map_per_pair():
    net, x = make_net(), make_inputs(3)
    cam = GradCAM(net, "features.2")
    positive = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    maps, sample_idx, class_idx = explain_positive_classes(cam, x, positive)
    assert maps.shape == (3, 1, 16, 16)
    assert sample_idx.tolist() == [0, 0, 2] and class_idx.tolist() == [0, 2, 1]
    for n, (i, k) in enumerate(zip(sample_idx.tolist(), class_idx.tolist())):
        torch.testing.assert_close(maps[n : n + 1], cam(x[i : i + 1], k))
    empty, _, _ = explain_positive_classes(cam, x, torch.zeros(3, 3, dtype=torch.bool))
    assert empty.shape == (0, 1, 16, 16)


def test_registry():
    for name, cls in EXPLAINERS.items():
        assert type(get_explainer(name, make_net_for(name), **small_kwargs(name))) is cls
    net = make_net()
    assert get_explainer("GradCAM", net, target_layer="features.2").target_layer is net.features[2]
    with pytest.raises(ValueError, match="gradcam, gradcampp, eigencam, gradient_shap, integrated_gradients, occlusion, patch_logits, counterfactual"):
        get_explainer("lime", net)


def test_baselines_build_save_load(tmp_path):
    dataset = [{"image": np.full((2, 4, 4), i, dtype=np.float32), "label": i} for i in range(10)]
    refs = build_baselines(dataset, n=4, seed=3)
    assert refs.shape == (4, 2, 4, 4) and len(set(refs[:, 0, 0, 0].tolist())) == 4
    assert torch.equal(refs, build_baselines(dataset, n=4, seed=3))
    save_baselines(refs, tmp_path / "baselines.pt")
    assert torch.equal(load_baselines(tmp_path / "baselines.pt"), refs)
