"""Tests of the PatchNet classifier (patch folding, locality, export, building) and its ``patch_logits`` explainer."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.networks.nets import DenseNet121, EfficientNetBN
from torch import nn

from segx_monai.explainers import GradCAM, PatchLogits, default_target_layer, get_explainer
from segx_monai.networks import PatchNet
from segx_monai.networks.classifiers import build_classifier


def tiny_densenet(num_classes: int = 3) -> DenseNet121:
    """A narrow two-block DenseNet (8x downsampling): patches of 8 px and more."""
    torch.manual_seed(0)
    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=num_classes, init_features=8, growth_rate=4, block_config=(2, 2))


def images(batch: int = 2, size: int = 32, channels: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


class MeanAndMax(nn.Module):
    """A patch classifier with known logits: class 0 = the patch's mean, class 1 = its maximum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], dim=1)


class KnownPatchLogits(PatchNet):
    """A PatchNet whose patch logits are given, whatever the image."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__(nn.Identity(), grid=tuple(logits.shape[2:]))
        self.register_buffer("logits", logits)

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_patch_logits_are_the_backbone_on_each_patch_and_their_mean_the_image_logits():
    net = PatchNet(tiny_densenet(), grid=(2, 4)).eval()
    x = images(2, size=32)
    with torch.no_grad():
        patch_logits, image_logits = net.patch_logits(x), net(x)
        assert patch_logits.shape == (2, 3, 2, 4)
        for i, j in itertools.product(range(2), range(4)):  # patch (i, j) is rows 16i.., columns 8j..
            torch.testing.assert_close(patch_logits[:, :, i, j], net.backbone(x[:, :, 16 * i : 16 * (i + 1), 8 * j : 8 * (j + 1)]))
    torch.testing.assert_close(image_logits, patch_logits.mean(dim=(2, 3)))


@pytest.mark.parametrize("i, j", [(0, 0), (2, 1)])
def test_a_patch_logit_depends_on_its_own_pixels_only(i, j):
    net = PatchNet(tiny_densenet(), grid=4).eval()
    x = images(1, size=32)
    inside = torch.zeros_like(x, dtype=torch.bool)
    inside[..., 8 * i : 8 * (i + 1), 8 * j : 8 * (j + 1)] = True
    noise = images(1, size=32, seed=5)
    with torch.no_grad():
        before = net.patch_logits(x)
        outside_changed = net.patch_logits(torch.where(inside, x, noise))
        inside_changed = net.patch_logits(torch.where(inside, noise, x))
    others = torch.ones(4, 4, dtype=torch.bool)
    others[i, j] = False
    torch.testing.assert_close(outside_changed[..., i, j], before[..., i, j], atol=1e-6, rtol=0)
    assert (outside_changed - before)[..., others].abs().amin(dim=1).gt(1e-4).all()  # every other patch changed
    torch.testing.assert_close(inside_changed[..., others], before[..., others], atol=1e-6, rtol=0)
    assert (inside_changed - before)[..., i, j].abs().gt(1e-4).all()


def test_an_image_size_not_divisible_by_the_grid_is_refused():
    net = PatchNet(tiny_densenet(), grid=4)
    with pytest.raises(ValueError, match="image size 30x32 is not divisible by the 4x4 patch grid"):
        net(torch.zeros(1, 1, 30, 32))


def test_torchscript_round_trip(tmp_path):
    net = PatchNet(tiny_densenet(), grid=(2, 4)).eval()  # DenseNet121's own layers: the scripted one optimises slowly
    torch.jit.save(torch.jit.script(net), tmp_path / "patchnet.ts")
    loaded = torch.jit.load(tmp_path / "patchnet.ts")
    x = images(2, size=32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(loaded.patch_logits(x), net.patch_logits(x), atol=1e-6, rtol=1e-5)


def test_mixed_precision_forward_and_backward():
    """Under autocast (bfloat16 on the CPU, as float16 on CUDA with the bundles' amp) the patch folding keeps the
    patch logits' layout and the loss reaches every backbone weight."""
    net, x = PatchNet(tiny_densenet(), grid=2), images(2, size=32)
    with torch.no_grad():
        expected = net.eval().patch_logits(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = net.patch_logits(x)
        net.train()(x).float().sum().backward()
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), expected, atol=0.1, rtol=0.05)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("backbone, cls", [("densenet121", DenseNet121), ("efficientnet-b0", EfficientNetBN)])
def test_build_classifier_patchnet(backbone, cls):
    net = build_classifier("patchnet", in_channels=1, num_classes=3, patch_backbone=backbone, patch_grid=2).eval()
    assert isinstance(net, PatchNet) and type(net.backbone) is cls and (net.grid_h, net.grid_w) == (2, 2)
    with torch.no_grad():
        assert net.patch_logits(images(1, size=64)).shape == (1, 3, 2, 2)
    assert build_classifier("patchnet", in_channels=1, num_classes=3, patch_backbone=backbone, patch_grid=4).grid_h == 4


def test_build_classifier_names():
    assert type(build_classifier("efficientnet-b0", in_channels=1, num_classes=3)) is EfficientNetBN
    with pytest.raises(ValueError, match=r"\['densenet121', 'efficientnet-b0', 'patchnet', 'resnet50'\]"):
        build_classifier("vit")
    with pytest.raises(ValueError, match=r"patch_backbone 'patchnet'.*\['densenet121', 'efficientnet-b0', 'resnet50'\]"):
        build_classifier("patchnet", patch_backbone="patchnet")
    with pytest.raises(ValueError, match="pretrained=<path"):
        build_classifier("patchnet", patch_backbone="efficientnet-b0", pretrained=True)
    with pytest.raises(ValueError, match="patchnet is 2D"):
        build_classifier("patchnet", spatial_dims=3)


def test_pretrained_file_goes_into_the_backbone(tmp_path):
    source = build_classifier("densenet121", in_channels=1, num_classes=5)  # another task's head
    torch.save(source.state_dict(), tmp_path / "densenet.pt")
    net = build_classifier("patchnet", in_channels=1, num_classes=3, patch_grid=2, pretrained=str(tmp_path / "densenet.pt"))
    assert torch.equal(net.backbone.features.conv0.weight, source.features.conv0.weight)
    assert net.backbone.class_layers.out.weight.shape == (3, 1024)
    torch.save(net.state_dict(), tmp_path / "patchnet.pt")  # a PatchNet's own file, names under backbone.
    again = build_classifier("patchnet", in_channels=1, num_classes=3, patch_grid=2, pretrained=str(tmp_path / "patchnet.pt"))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values()))


# ---- the patch_logits explainer


def expected_painting(logits: torch.Tensor, targets: list[int], size: tuple[int, int]) -> torch.Tensor:
    """Pixel (y, x) gets the logit of its patch (y // ph, x // pw), then min-max per image, pixel by pixel."""
    grid_h, grid_w = logits.shape[2:]
    maps = torch.zeros(len(targets), 1, *size)
    for b, t in enumerate(targets):
        for y, x in itertools.product(range(size[0]), range(size[1])):
            maps[b, 0, y, x] = logits[b, t, y // (size[0] // grid_h), x // (size[1] // grid_w)]
        maps[b] = (maps[b] - maps[b].min()) / (maps[b].max() - maps[b].min())
    return maps


def test_patch_logits_paint_their_patches_raw_and_scaled():
    logits = torch.tensor([[[[1.0, -2.0, 0.5, 3.0], [0.0, 2.0, -1.0, 1.0]], [[4.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]]],
                           [[[0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 1.0]], [[-1.0, -2.0, -3.0, -4.0], [-5.0, -6.0, -7.0, -8.0]]]])
    net, x = KnownPatchLogits(logits), torch.zeros(2, 1, 8, 8)  # a 2x4 grid of 4x2 patches
    targets = [1, 0]
    raw = get_explainer("patch_logits", net, mode="raw")(x, targets)
    torch.testing.assert_close(raw, expected_painting(logits, targets, (8, 8)))
    image_logits = logits.mean(dim=(2, 3))  # [[0.5, 1.125], [0.75, -4.5]]
    sigmoid = torch.sigmoid(image_logits[[0, 1], targets])
    softmax = torch.softmax(image_logits, dim=1)[[0, 1], targets]
    scaled = get_explainer("patch_logits", net, mode="scaled")(x, targets)
    torch.testing.assert_close(scaled, raw * sigmoid.view(2, 1, 1, 1))
    torch.testing.assert_close(scaled.flatten(1).amax(1), sigmoid)
    torch.testing.assert_close(get_explainer("patch_logits", net, mode="scaled", activation="softmax")(x, targets), raw * softmax.view(2, 1, 1, 1))
    # no targets: the class of the highest image logit
    torch.testing.assert_close(get_explainer("patch_logits", net)(x), expected_painting(logits, [1, 0], (8, 8)))


def test_shifted_grids_averaged_by_hand():
    """4x4 image, 2x2 grid of 2x2 patches, 2 shifts: the image rolled by 0 and 1 px along each axis. Pixel (i, j) of
    the map of roll (dy, dx) is the class score of the pixels (u, v) that share its rolled patch."""
    net = PatchNet(MeanAndMax(), grid=2)
    x = torch.tensor([[0.0, 1.0, 5.0, 2.0], [3.0, -1.0, 0.5, 4.0], [2.0, 2.0, -3.0, 1.0], [7.0, 0.0, 1.0, 6.0]])[None, None]
    calls = []
    net.backbone.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    for target, score in ((0, lambda v: sum(v) / len(v)), (1, max)):
        expected = torch.zeros(4, 4)
        for (dy, dx), i, j in itertools.product(itertools.product((0, 1), (0, 1)), range(4), range(4)):
            patch = ((i + dy) % 4 // 2, (j + dx) % 4 // 2)
            expected[i, j] += score([x[0, 0, u, v].item() for u, v in itertools.product(range(4), range(4))
                                     if ((u + dy) % 4 // 2, (v + dx) % 4 // 2) == patch]) / 4
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        calls.clear()
        smoothed = PatchLogits(net, shifts=2)(x, target)
        assert calls == [4] * 4  # one forward per shift, the 4 patches of the image in one batch
        torch.testing.assert_close(smoothed, expected[None, None])
        assert not torch.allclose(smoothed, PatchLogits(net, shifts=1)(x, target))


def test_patch_logits_needs_a_patchnet_and_gradcam_refuses_one():
    with pytest.raises(ValueError, match="explainer_name patch_logits.*classifier_name: patchnet.*DenseNet121"):
        get_explainer("patch_logits", tiny_densenet())
    with pytest.raises(ValueError, match="mode"):
        PatchLogits(PatchNet(MeanAndMax(), 2), mode="soft")
    net = PatchNet(tiny_densenet(), grid=2)
    with pytest.raises(ValueError, match="explainer_name: patch_logits"):
        default_target_layer(net)
    with pytest.raises(ValueError, match="PatchNet's backbone: it sees the patches"):
        GradCAM(net, "backbone.features.denseblock2")(images(2, size=32), 0)
