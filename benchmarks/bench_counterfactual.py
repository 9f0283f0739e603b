"""COIN's counterfactual explainer: the cost of training its generator and of explaining with it, against the
classifier's own training and Grad-CAM, in one run, printed as tables.

    python benchmarks/bench_counterfactual.py [--image-size 128] [--channels 1] [--batch-size 16] [--rounds 5]
                                              [--threads N]

Set-up: the chest bundle's shape by default (one grey channel, 10 findings, multi-label, target "no finding"; pass
``--channels 3 --classes 7 --single-label`` for the skin bundle's), MONAI DenseNet121 with random weights, the
bundles' generator (``build_generator``) and discriminator (``build_discriminator``), a fixed random batch. Timed per
image:

- ``training``: one iteration of :class:`~segx_monai.engines.counterfactual.CounterfactualTrainer` (generator forward,
  a discriminator step, the generator's four losses through the frozen classifier and its step) against one AdamW
  step of the classifier itself;
- ``explanation``: the ``counterfactual`` explainer (one generator forward and the difference map) against Grad-CAM
  (final layer) on the predicted classes, at ``--batch-size`` and at batch 1.

Every variant runs once to warm up, then in interleaved rounds (the order rotates); figures are medians.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.data import DataLoader

from segx_monai.engines.counterfactual import CounterfactualTrainer
from segx_monai.explainers import get_explainer
from segx_monai.networks.classifiers import build_classifier
from segx_monai.networks.counterfactual import build_discriminator, build_generator

from bench_patchnet import median_ms_per_image, print_table, training_step  # this folder's: run as a script


def generator_training_step(trainer: CounterfactualTrainer, images: torch.Tensor, labels: torch.Tensor):
    """One training iteration of ``trainer`` on the batch, as its engine runs it (events fired, output decollated)."""
    def step() -> None:
        trainer._iteration(trainer, {"image": images, "label": labels})
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--single-label", action="store_true", help="softmax classes, target the first (skin: nv)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    n, size, k = args.batch_size, args.image_size, args.classes
    images = torch.rand((n, args.channels, size, size), generator=generator)
    if args.single_label:
        labels = torch.nn.functional.one_hot(torch.randint(0, k, (n,), generator=generator), k).float()
        target = torch.nn.functional.one_hot(torch.tensor(0), k).float()
    else:
        labels = (torch.rand((n, k), generator=generator) < 0.2).float()
        target = torch.zeros(k)
    classifier = build_classifier("densenet121", in_channels=args.channels, num_classes=k)
    counterfactual_generator = build_generator(args.channels, k, low=0.0, high=1.0)
    discriminator = build_discriminator(args.channels)
    trainer = CounterfactualTrainer(
        device="cpu", max_epochs=1, train_data_loader=DataLoader([]), generator=counterfactual_generator,
        discriminator=discriminator, classifier=classifier, target=target, multi_label=not args.single_label,
        g_optimizer=torch.optim.Adam(counterfactual_generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        d_optimizer=torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
    )
    print(f"{n} images {args.channels}x{size}x{size}, {k} classes ({'single' if args.single_label else 'multi'}-label); "
          f"{torch.get_num_threads()} threads; {args.rounds} rounds")
    wall = time.perf_counter()

    train = median_ms_per_image({"DenseNet121 classifier step (reference)": training_step(classifier, images, labels),
                                 "COIN generator + discriminator iteration": generator_training_step(trainer, images, labels)},
                                n, args.rounds)
    print_table("training (per image)", train, "DenseNet121 classifier step (reference)")

    classifier.eval()
    counterfactual_generator.eval()
    explainers = {"Grad-CAM (final layer)": get_explainer("gradcam", classifier),
                  "counterfactual": get_explainer("counterfactual", classifier, generator=counterfactual_generator, target=target)}
    variants = {}
    for batch in (n, 1):
        for name, explainer in explainers.items():
            variants[f"{name}, batch {batch}"] = (lambda e=explainer, b=batch: [e(images[i:i + b]) for i in range(0, n, b)])
    explain = median_ms_per_image(variants, n, args.rounds)
    print_table("explanation (predicted classes; per image)", explain, f"Grad-CAM (final layer), batch {n}")
    print(f"total {time.perf_counter() - wall:.0f} s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
