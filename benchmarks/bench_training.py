"""Training throughput of the ham_segx bundle's trainer vs a plain PyTorch loop, and epoch-2 data loading with and
without caching, in one run on the same synthetic data, network and batch size.

    python benchmarks/bench_training.py [--n-images 240] [--image-size 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.data import DataLoader, Dataset

from segx_monai.data.synthetic_derm import generate_ham_like

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "ham_segx" / "configs"
TRAIN_CLASSIFIER = ["inference.yaml", "train_classifier.yaml"]  # the shared base, then the classifier's overlay


def bundle_workflow(root: Path, data: Path, args, **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in TRAIN_CLASSIFIER], meta_file=str(CONFIGS / "metadata.json"), logging_file=False,
        workflow_type="train", bundle_root=str(root), dataset_dir=str(data), image_size=args.image_size,
        batch_size=args.batch_size, max_epochs=2, val_interval=1000, num_workers=0, **overrides,
    )
    workflow.initialize()
    return workflow


def bundle_epoch_seconds(workflow: ConfigWorkflow) -> float:
    """Wall time of the trainer's second epoch (the first fills the cache)."""
    trainer, times = workflow.parser.get_parsed_content("train#trainer"), {}
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: times.__setitem__(e.state.epoch, time.perf_counter()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: times.__setitem__(-e.state.epoch, time.perf_counter()))
    workflow.run()
    return times[-2] - times[2]


def plain_epoch_seconds(workflow: ConfigWorkflow) -> float:
    """The same network, data loader, loss and optimizer in a hand-written loop; wall time of epoch 2."""
    network, loader = workflow.parser.get_parsed_content("network"), workflow.parser.get_parsed_content("train#dataloader")
    loss_fn, optimizer = workflow.parser.get_parsed_content("loss"), workflow.parser.get_parsed_content("optimizer")
    device = workflow.parser.get_parsed_content("device")
    network.train()
    for epoch in (1, 2):
        start = time.perf_counter()
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(network(batch["image"].to(device)), batch["label"].to(device))
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def loading_epoch_seconds(workflow: ConfigWorkflow, cached: bool) -> float:
    """Epoch 2 of iterating the training data loader alone, with MONAI's CacheDataset or a plain Dataset."""
    dataset = workflow.parser.get_parsed_content("train#dataset")
    if not cached:
        dataset = Dataset(dataset.data, transform=workflow.parser.get_parsed_content("train#preprocessing"))
    loader = DataLoader(dataset, batch_size=workflow.parser.get_parsed_content("batch_size"), shuffle=True, num_workers=0)
    for _ in loader:
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=240)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_ham_like(Path(tmp) / "ham", n_images=args.n_images, image_size=(160, 120))
        n_train = len(bundle_workflow(Path(tmp) / "probe", data, args).parser.get_parsed_content("train#dataset"))
        bundle = bundle_epoch_seconds(bundle_workflow(Path(tmp) / "bundle", data, args))
        plain = plain_epoch_seconds(bundle_workflow(Path(tmp) / "plain", data, args))
        cached = loading_epoch_seconds(bundle_workflow(Path(tmp) / "cached", data, args), cached=True)
        uncached = loading_epoch_seconds(bundle_workflow(Path(tmp) / "uncached", data, args), cached=False)
    print(f"\nDenseNet121, {n_train} training images of 160x120 resized to {args.image_size}, batch {args.batch_size}, {torch.get_num_threads()} threads, epoch 2")
    print(f"{'what':38s} {'seconds':>8s} {'images/s':>9s} {'ratio':>7s}")
    rows = [("plain PyTorch loop", plain, 1.0), ("bundle SupervisedTrainer + handlers", bundle, bundle / plain),
            ("data loading, CacheDataset", cached, 1.0), ("data loading, no cache (JPEG decode)", uncached, uncached / cached)]
    for name, seconds, ratio in rows:
        print(f"{name:38s} {seconds:8.2f} {n_train / seconds:9.1f} {ratio:6.2f}x")
    print(f"bundle overhead: {100 * (bundle / plain - 1):+.1f}% (goal <= 10%)")


if __name__ == "__main__":
    main()
