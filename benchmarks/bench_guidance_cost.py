"""Cost of a guided training iteration against a plain one: MONAI's SupervisedTrainer with DenseNet121, with and
without the guidance handler (input gradients, Grad-CAM), same data and batch, interleaved rounds, medians.

    python benchmarks/bench_guidance_cost.py [--image-size 64] [--batch-size 32] [--iterations 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from torch import nn

from segx_monai.handlers.guidance import ExplanationGuidance
from segx_monai.networks.classifiers import build_classifier


def iteration_ms(method: str, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, iterations: int, layer: str) -> float:
    """Median ms per training iteration (after one warm-up iteration) of a fresh DenseNet121 with ``method`` guidance."""
    torch.manual_seed(0)
    network = build_classifier("densenet121", num_classes=7, in_channels=3)
    times: list[float] = []
    batch = [{"image": images, "label": labels, "mask": masks}] * (iterations + 1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=batch, network=network, decollate=False,
        optimizer=torch.optim.AdamW(network.parameters(), 1e-3), loss_function=nn.CrossEntropyLoss(),
    )
    if method != "none":
        ExplanationGuidance(network, method, 1.0, margin=2, target_layer=layer).attach(trainer)
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: times.append(-time.perf_counter()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: times.__setitem__(-1, times[-1] + time.perf_counter()))
    trainer.run()
    return 1000 * statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layer", default="features.denseblock2", help="Grad-CAM layer (the bundles' default)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    size, n = args.image_size, args.batch_size
    images, labels = torch.randn(n, 3, size, size), torch.randint(0, 7, (n,))
    masks = torch.zeros(n, 1, size, size)
    masks[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    methods = ("none", "input_gradient", "gradcam")
    results = {m: [] for m in methods}
    for _ in range(args.rounds):
        for method in methods:
            results[method].append(iteration_ms(method, images, labels, masks, args.iterations, args.layer))
    plain = statistics.median(results["none"])
    print(f"\nDenseNet121, {size} px, batch {n}, 2 threads, {args.rounds} interleaved rounds of {args.iterations} iterations\n")
    print("| training iteration | ms/iteration | ms/image | ratio to plain |")
    print("|---|---|---|---|")
    for method in methods:
        ms = statistics.median(results[method])
        print(f"| {'plain' if method == 'none' else method + ' guidance'} | {ms:.0f} | {ms / n:.1f} | {ms / plain:.2f} |")


if __name__ == "__main__":
    main()
