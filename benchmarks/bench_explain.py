"""Per-image cost of the explainers and of SegX/SegU on top of them, batched vs one image at a time, in one run.

    python benchmarks/bench_explain.py [--image-size 64] [--repeats 5] [--shap-repeats 3] [--n-samples 50] [--threads N]

Set-up: MONAI DenseNet121 (3 -> 7 classes, random weights, eval mode), the bundles' segmenter
(``build_segmenter()``), a fixed random batch of 16 images with one ground-truth disk mask each, and 50 random
images as GradientSHAP baselines. Every variant is timed at batch 1 (the first image) and batch 16:

- ``Grad-CAM`` / ``GradientSHAP``: the package explainer (``get_explainer``) on the batch, predicted classes;
- ``SegX-...``: the interpretation handlers' per-batch work, without file writing: RegionSegmentation (segmenter
  forward), ExplainPredictions, SegXMaps, SegUScores (cIoU, cAUITC) and LocalizationScores (IoU@5%, AUITC, hit,
  relevance mass of the raw and the SegX map against the ground truth);
- ``floor``: segmenter forward + classifier forward + gradient of the selected logits with respect to the Grad-CAM
  target layer (``class_layers.relu``), with no explainer logic: the convolutional features run without recording
  a graph, as nothing before the target layer needs a gradient;
- ``one at a time``: the published way, one image per call: a hand-written hook-based Grad-CAM (``score.backward()``
  on the model as it is), and expected gradients for all 7 classes of each image (50 samples in one batch per
  class, as shap's GradientExplainer). ``--published-shap-images`` images per repetition (cycled through the 16).

All variants run once to warm up, then in interleaved rounds (the order rotates every round) so that a load shared
with other processes hits them alike; each figure is the median over the rounds. A fast variant repeats its call
within a round until the sample lasts ``--min-sample-s``. Ratios are time ratios:
ms/image of the row divided by ms/image of the row named under "vs" (below 1 = faster).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet121
from torch import Tensor, nn

from segx_monai.explainers import get_explainer
from segx_monai.handlers.region import RegionSegmentation
from segx_monai.handlers.segx import ExplainPredictions, LocalizationScores, SegUScores, SegXMaps
from segx_monai.networks.segmenters import build_segmenter

N_CLASSES = 7
N_IMAGES = 16
BATCH_SIZES = (1, N_IMAGES)
CLASS_NAMES = [f"class{k}" for k in range(N_CLASSES)]


def disk_masks(n: int, size: int, generator: torch.Generator) -> Tensor:
    """``(n, 1, size, size)`` ground-truth masks: one disk per image, random centre and radius."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = size * (0.3 + 0.4 * torch.rand(n, 2, generator=generator))
    radii = size * (0.1 + 0.2 * torch.rand(n, generator=generator))
    inside = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2 <= radii[:, None, None] ** 2
    return inside[:, None].float()


class SegXPipeline:
    """The interpretation handlers of the bundle applied to one batch, with the wall time of each stage."""

    def __init__(self, segmenter: nn.Module, explainer) -> None:
        self.region = RegionSegmentation(segmenter)
        self.explain = ExplainPredictions(explainer, CLASS_NAMES)
        self.post = [SegXMaps(), SegUScores(), LocalizationScores(gt_key="mask")]
        self.post[-1].reset()

    def __call__(self, images: Tensor, probs: Tensor, masks: Tensor) -> dict[str, float]:
        # what the evaluator hands to its handlers: decollated output items and batch items
        state = SimpleNamespace(
            output=[{"image": image, "pred": prob} for image, prob in zip(images, probs)],
            batch=[{"mask": mask} for mask in masks],
        )
        engine = SimpleNamespace(state=state)
        t0 = time.perf_counter()
        self.region(engine)
        t1 = time.perf_counter()
        self.explain(engine)
        t2 = time.perf_counter()
        for handler in self.post:
            handler(engine)
        t3 = time.perf_counter()
        return {"segmenter": t1 - t0, "explainer": t2 - t1, "segx_segu_metrics": t3 - t2}


def floor_pass(classifier: DenseNet121, segmenter: nn.Module, images: Tensor, targets: Tensor) -> None:
    """Segmenter forward + classifier forward + d(selected logits)/d(target layer): the least a SegX-Grad-CAM needs."""
    with torch.no_grad():
        segmenter(images).softmax(1)
        activations = classifier.class_layers.relu(classifier.features(images))
    activations.requires_grad_()
    logits = classifier.class_layers[1:](activations)
    torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), activations)


def naive_gradcam(model: nn.Module, layer: nn.Module, image: Tensor, target: int) -> Tensor:
    """Grad-CAM of one image ``(C, H, W)`` the usual hand-written way: hooks, ``model.zero_grad()``, ``score.backward()``."""
    store: dict[str, Tensor] = {}

    def keep(module: nn.Module, args: tuple, output: Tensor) -> None:
        store["activations"] = output
        output.register_hook(lambda grad: store.__setitem__("gradients", grad))

    handle = layer.register_forward_hook(keep)
    try:
        logits = model(image[None])
    finally:
        handle.remove()
    model.zero_grad()
    logits[0, target].backward()
    weights = store["gradients"].mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * store["activations"].detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[1:], mode="bilinear", align_corners=False)
    return (cam - cam.min()) / (cam.max() - cam.min() + 1e-8)


def naive_shap_all_classes(model: nn.Module, image: Tensor, baselines: Tensor, n_samples: int, seed: int) -> Tensor:
    """Expected gradients of one image for every class, one forward/backward of ``n_samples`` points per class."""
    generator = torch.Generator().manual_seed(seed)
    maps = []
    for k in range(N_CLASSES):
        index = torch.randint(len(baselines), (n_samples,), generator=generator)
        alpha = torch.rand(n_samples, 1, 1, 1, generator=generator)
        base = baselines[index]
        points = (base + alpha * (image - base)).requires_grad_()
        (grads,) = torch.autograd.grad(model(points)[:, k].sum(), points)
        maps.append((grads * (image - base)).mean(dim=0).abs().mean(dim=0))
    return torch.stack(maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64, help="square image side (64; the study used 224)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the Grad-CAM family and the floor")
    parser.add_argument("--shap-repeats", type=int, default=3, help="timed rounds of the GradientSHAP family")
    parser.add_argument("--n-samples", type=int, default=50, help="GradientSHAP draws per image")
    parser.add_argument("--n-baselines", type=int, default=50, help="GradientSHAP reference images")
    parser.add_argument("--published-shap-images", type=int, default=1, help="images per round, one-at-a-time SHAP")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)")
    parser.add_argument("--min-sample-s", type=float, default=0.25, help="fast variants: calls per sample to last this long")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    size = args.image_size

    classifier = DenseNet121(spatial_dims=2, in_channels=3, out_channels=N_CLASSES).eval()
    segmenter = build_segmenter().eval()
    images = torch.randn(N_IMAGES, 3, size, size, generator=generator)
    masks = disk_masks(N_IMAGES, size, generator)
    baselines = torch.randn(args.n_baselines, 3, size, size, generator=generator)
    with torch.no_grad():  # the evaluator's prediction, available to the handlers before they run
        probs = classifier(images).softmax(1)
    targets = probs.argmax(1)

    gradcam = get_explainer("gradcam", classifier)
    shap = get_explainer("gradient_shap", classifier, baselines=baselines, n_samples=args.n_samples)
    # warm-up SHAP: the draws of one pass, i.e. the same forward shapes at a fraction of the cost
    shap_warm = get_explainer("gradient_shap", classifier, baselines=baselines, n_samples=min(args.n_samples, -(-shap.rows_per_pass(images) // len(images))))
    pipelines = {"gradcam": SegXPipeline(segmenter, gradcam), "shap": SegXPipeline(segmenter, shap)}
    pipeline_shap_warm = SegXPipeline(segmenter, shap_warm)
    target_layer = classifier.class_layers.relu

    # one timed sample per variant: `calls` calls in a row; returns (seconds, images explained, stage seconds or None)
    def timed(fn: Callable[[], object], n_images: int) -> Callable[[int], tuple[float, int, dict | None]]:
        def run(calls: int = 1) -> tuple[float, int, dict | None]:
            stage: dict[str, float] = {}
            start = time.perf_counter()
            for _ in range(calls):
                out = fn()
                for name, value in (out.items() if isinstance(out, dict) else ()):
                    stage[name] = stage.get(name, 0.0) + value
            return time.perf_counter() - start, calls * n_images, stage or None

        return run

    published_shap_cursor = [0]

    def published_shap(n_images: int) -> None:
        for _ in range(n_images):
            i = published_shap_cursor[0] % N_IMAGES
            published_shap_cursor[0] += 1
            naive_shap_all_classes(classifier, images[i], baselines, args.n_samples, seed=i)

    variants: dict[tuple[str, int], tuple[Callable, Callable, int]] = {}  # key -> (timed run, warm-up, repeats)
    for b in BATCH_SIZES:
        x, p, m, t = images[:b], probs[:b], masks[:b], targets[:b]
        variants[("floor", b)] = (timed(lambda x=x, t=t: floor_pass(classifier, segmenter, x, t), b), None, args.repeats)
        variants[("Grad-CAM", b)] = (timed(lambda x=x, t=t: gradcam(x, t), b), None, args.repeats)
        variants[("SegX-Grad-CAM", b)] = (timed(lambda x=x, p=p, m=m: pipelines["gradcam"](x, p, m), b), None, args.repeats)
        variants[("GradientSHAP", b)] = (
            timed(lambda x=x, t=t: shap(x, t), b), lambda x=x, t=t: shap_warm(x, t), args.shap_repeats)
        variants[("SegX-GradientSHAP", b)] = (
            timed(lambda x=x, p=p, m=m: pipelines["shap"](x, p, m), b),
            lambda x=x, p=p, m=m: pipeline_shap_warm(x, p, m), args.shap_repeats)
    variants[("Grad-CAM one at a time", 1)] = (
        timed(lambda: [naive_gradcam(classifier, target_layer, images[i], int(targets[i])) for i in range(N_IMAGES)], N_IMAGES),
        None, args.repeats)
    variants[("SHAP all classes one at a time", 1)] = (
        timed(lambda: published_shap(args.published_shap_images), args.published_shap_images),
        lambda: naive_shap_all_classes(classifier, images[0], baselines, min(args.n_samples, 10), seed=0), args.shap_repeats)

    print(f"DenseNet121 + BasicUNet, {N_IMAGES} images 3x{size}x{size}, GradientSHAP {args.n_samples} samples x "
          f"{args.n_baselines} baselines, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          "warming up ...", flush=True)
    wall = time.perf_counter()
    calls = {}
    for key, (run, warm, _) in variants.items():
        (warm or run)()
        # fast variants repeat their call within a sample, so that each sample lasts at least --min-sample-s
        calls[key] = 1 if warm else max(1, math.ceil(args.min_sample_s / run()[0]))

    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in variants}
    stages: dict[tuple[str, int], list[dict]] = {key: [] for key in variants}
    keys = list(variants)
    for round_ in range(max(args.repeats, args.shap_repeats)):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            run, _, repeats = variants[key]
            if round_ >= repeats:
                continue
            elapsed, n, stage = run(calls[key])
            seconds[key].append(elapsed / n)
            if stage is not None:
                stages[key].append({name: s / n for name, s in stage.items()})
        print(f"  round {round_ + 1} done ({time.perf_counter() - wall:.0f} s)", flush=True)

    ms = {key: 1000 * statistics.median(values) for key, values in seconds.items()}

    def stage_ms(key: tuple[str, int], name: str) -> float:
        return 1000 * statistics.median(s[name] for s in stages[key])

    def without_segmenter(key: tuple[str, int]) -> float:
        """Median over rounds of (pipeline time - its segmenter forward), ms/image."""
        return 1000 * statistics.median(t - s["segmenter"] for t, s in zip(seconds[key], stages[key]))

    one_gc, one_shap = ("Grad-CAM one at a time", 1), ("SHAP all classes one at a time", 1)
    reference = {}
    for b in BATCH_SIZES:
        reference[("Grad-CAM", b)] = one_gc
        reference[("SegX-Grad-CAM", b)] = ("floor", b)
        reference[("GradientSHAP", b)] = one_shap
        reference[("SegX-GradientSHAP", b)] = ("GradientSHAP", b)
    order = [(name, b) for name in ("floor", "Grad-CAM", "SegX-Grad-CAM") for b in BATCH_SIZES] + [one_gc]
    order += [(name, b) for name in ("GradientSHAP", "SegX-GradientSHAP") for b in BATCH_SIZES] + [one_shap]

    print(f"\n{'method':32s} {'batch':>5s} {'ms/image':>10s} {'images/s':>9s} {'ratio':>7s}  vs")
    for key in order:
        ref = reference.get(key)
        ratio, vs = (f"{ms[key] / ms[ref]:6.2f}x", f"{ref[0]} (batch {ref[1]})") if ref else ("     - ", "")
        print(f"{key[0]:32s} {key[1]:5d} {ms[key]:10.1f} {1000 / ms[key]:9.2f} {ratio:>7s}  {vs}")
    print("ratio = ms/image of the row / ms/image of the 'vs' row (below 1: faster)")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print("\ngoals")
    for name, raw in (("SegX-Grad-CAM", "Grad-CAM"), ("SegX-GradientSHAP", "GradientSHAP")):
        for b in BATCH_SIZES:
            added = without_segmenter((name, b)) / ms[(raw, b)] - 1
            print(f"  (a) {name} - segmenter vs {raw}, batch {b:2d}: {100 * added:+6.1f}% (goal <= +5%)  "
                  f"{verdict(added <= 0.05)}")
    speedup = ms[one_gc] / ms[("Grad-CAM", N_IMAGES)]
    print(f"  (b) Grad-CAM batch {N_IMAGES} vs one at a time: {speedup:5.2f}x the throughput (goal >= 3x)  "
          f"{verdict(speedup >= 3)}")
    for b in BATCH_SIZES:
        ratio = ms[("SegX-Grad-CAM", b)] / ms[("floor", b)]
        print(f"  (c) SegX-Grad-CAM vs floor, batch {b:2d}: {ratio:5.2f}x (goal <= 1.15x)  {verdict(ratio <= 1.15)}")

    print("\nSegX pipeline stages, ms/image (median): segmenter | explainer | SegX + SegU + metrics")
    for name in ("SegX-Grad-CAM", "SegX-GradientSHAP"):
        for b in BATCH_SIZES:
            seg, exp, post = (stage_ms((name, b), s) for s in ("segmenter", "explainer", "segx_segu_metrics"))
            print(f"  {name:18s} batch {b:2d}: {seg:8.1f} | {exp:9.1f} | {post:6.2f} ({100 * post / exp:.1f}% of the explainer)")
    print(f"total {time.perf_counter() - wall:.0f} s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
