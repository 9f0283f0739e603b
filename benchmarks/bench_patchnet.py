"""PatchNet vs DenseNet121: training and explanation throughput in one run, and the localisation comparison of a
bundle's interpretation runs (the demo's), printed as tables.

    python benchmarks/bench_patchnet.py [--image-size 128] [--grid 4] [--batch-size 16] [--rounds 5] [--threads N]
                                        [--bundle bundles/chestx_segx]

Set-up: MONAI DenseNet121 and a PatchNet whose shared patch classifier is a DenseNet121 (``build_classifier``), one
grey channel, 10 classes (the chest bundle's shape), random weights, a fixed random batch. Timed per image:

- ``train``: forward, BCE-with-logits loss, backward and an AdamW step, in train mode;
- ``explain``: the package explainers on the batch, predicted classes: Grad-CAM and Grad-CAM++ (final layer and
  ``--gradcam-layer``), Eigen-CAM on DenseNet121; ``patch_logits`` raw, scaled and with 2 x 2 shifted grids on PatchNet.

Every variant runs once to warm up, then in interleaved rounds (the order rotates) so that other load hits them
alike; figures are medians over the rounds. With ``--bundle``, the table of ``segx_monai.report.comparison`` for that
bundle's finished interpretation runs follows (run ``make demo DEMO=chest CLASSIFIER=patchnet`` first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from segx_monai.explainers import get_explainer
from segx_monai.networks.classifiers import build_classifier
from segx_monai.report.comparison import MAP_METRICS, VARIANTS, compare_runs
from segx_monai.report.render import fmt_estimate

N_CLASSES = 10


def training_step(network: torch.nn.Module, images: Tensor, labels: Tensor) -> Callable[[], None]:
    """One optimisation step of ``network`` on the batch."""
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        network.train()
        optimizer.zero_grad()
        loss_fn(network(images), labels).backward()
        optimizer.step()

    return step


def median_ms_per_image(variants: dict[str, Callable[[], object]], n_images: int, rounds: int) -> dict[str, float]:
    """Median wall time per image of each variant over interleaved rounds, after one warm-up call each."""
    for fn in variants.values():
        fn()
    samples = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            variants[name]()
            samples[name].append((time.perf_counter() - start) * 1000 / n_images)
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(title: str, ms: dict[str, float], reference: str) -> None:
    print(f"\n{title}\n{'variant':44s} {'ms/image':>10s} {'images/s':>9s} {'ratio':>7s}  vs {reference}")
    for name, value in ms.items():
        print(f"{name:44s} {value:10.1f} {1000 / value:9.2f} {value / ms[reference]:7.2f}")


def print_comparison(bundle: str) -> None:
    comparison = compare_runs(bundle)
    print(f"\nlocalisation on the test fold of {bundle} (95% bootstrap intervals)")
    header = ["run", "map", "AUROC", "hit rate", "mIoU all", "mIoU TP", *MAP_METRICS.values()]
    print(" | ".join(header))
    for run in comparison["runs"].values():
        for variant, label in VARIANTS.items():
            pointing = (run["pointing"] or {}).get(variant) or {}
            cells = [fmt_estimate(pointing[k]["mean"], pointing[k]["ci"]) if k in pointing else "n/a"
                     for k in ("hit_rate", "miou_all", "miou_tp")]
            cells += [fmt_estimate(run["maps"][k][variant]["mean"], run["maps"][k][variant]["ci"]) for k in MAP_METRICS]
            print(" | ".join([run["label"], label, f"{run['classifier_auroc']:.3f}", *cells]))
    for name, why in comparison["left_out"].items():
        print(f"not compared: {name}: {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--grid", type=int, default=4, help="PatchNet patches per side")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gradcam-layer", default="features.denseblock3", help="the earlier Grad-CAM layer timed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bundle", default=None, help="print this bundle's comparison of interpretation runs too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    size, n = args.image_size, args.batch_size
    images = torch.rand((n, 1, size, size), generator=generator)
    labels = (torch.rand((n, N_CLASSES), generator=generator) < 0.2).float()
    densenet = build_classifier("densenet121", in_channels=1, num_classes=N_CLASSES)
    patchnet = build_classifier("patchnet", in_channels=1, num_classes=N_CLASSES, patch_grid=args.grid)
    print(f"{n} images 1x{size}x{size}, {N_CLASSES} classes; PatchNet {args.grid}x{args.grid} patches of "
          f"{size // args.grid} px; {torch.get_num_threads()} threads; {args.rounds} rounds")
    wall = time.perf_counter()

    train = median_ms_per_image({"DenseNet121": training_step(densenet, images, labels),
                                 "PatchNet (DenseNet121 patches)": training_step(patchnet, images, labels)}, n, args.rounds)
    print_table("training (forward + loss + backward + AdamW step)", train, "DenseNet121")

    explainers = {
        "DenseNet121 Grad-CAM (final layer)": get_explainer("gradcam", densenet),
        f"DenseNet121 Grad-CAM ({args.gradcam_layer})": get_explainer("gradcam", densenet, target_layer=args.gradcam_layer),
        "DenseNet121 Grad-CAM++ (final layer)": get_explainer("gradcampp", densenet),
        "DenseNet121 Eigen-CAM (final layer)": get_explainer("eigencam", densenet),
        "PatchNet patch_logits raw": get_explainer("patch_logits", patchnet, mode="raw"),
        "PatchNet patch_logits scaled": get_explainer("patch_logits", patchnet, mode="scaled"),
        "PatchNet patch_logits raw, 2x2 shifts": get_explainer("patch_logits", patchnet, mode="raw", shifts=2),
    }
    explain = median_ms_per_image({name: (lambda e=e: e(images)) for name, e in explainers.items()}, n, args.rounds)
    print_table("explanation (one batch, predicted classes)", explain, "DenseNet121 Grad-CAM (final layer)")
    print(f"total {time.perf_counter() - wall:.0f} s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.bundle:
        print_comparison(args.bundle)


if __name__ == "__main__":
    main()
