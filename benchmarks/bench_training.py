"""The ham_segx bundle's training against a plain PyTorch loop on the same data, network, loss, optimizer and batch, at
each image size, and where the difference goes.

    python benchmarks/bench_training.py [--image-size 64 224] [--n-images 240] [--batch-size 32] [--epochs 2]
                                        [--repeats 3] [--threads 2]

Each round runs both, in alternating order (bundle first in even rounds, plain first in odd ones) so that a load
shared with other processes hits them alike, each on a fresh workflow of train_classifier.yaml (validation off:
``val_interval`` past the last epoch):

- ``bundle``: the workflow's ``SupervisedTrainer`` with every handler of the bundle (resume point of every epoch,
  learning-rate schedule, training accuracy, loggers, progress bar);
- ``plain``: a hand-written loop over the same workflow's data loader, network, loss and optimizer
  (``zero_grad``, forward, loss, backward, step; mixed precision as the bundle's ``amp``).

Both are timed from the start of epoch 2 (epoch 1 fills the data cache) to the end of the run, which for the bundle
includes its last resume point's write. The ratio is bundle / plain per round; its median is the figure.
The profile (Ignite's ``HandlersTimeProfiler`` on the bundle's trainer over the timed epochs, summed over the rounds)
gives seconds per epoch: data loading, the iteration (forward to step, with the handlers of MONAI's iteration events
in it, listed indented) and every event handler, against the plain loop's data loading and step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from ignite.engine import Events
from ignite.handlers import HandlersTimeProfiler
from monai.bundle import ConfigWorkflow
from monai.engines import IterationEvents

from segx_monai.data.synthetic_derm import generate_ham_like

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "ham_segx" / "configs"
TRAIN_CLASSIFIER = ["inference.yaml", "train_classifier.yaml"]  # the shared base, then the classifier's overlay
ITERATION_EVENTS = {e.name for e in IterationEvents}  # fired inside the iteration: their handlers are part of its time


def bundle_workflow(root: Path, data: Path, args, image_size: int) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in TRAIN_CLASSIFIER], meta_file=str(CONFIGS / "metadata.json"), logging_file=False,
        workflow_type="train", bundle_root=str(root), dataset_dir=str(data), image_size=image_size,
        batch_size=args.batch_size, max_epochs=args.epochs, val_interval=args.epochs + 1, num_workers=0,
    )
    workflow.initialize()
    return workflow


def bundle_run(workflow: ConfigWorkflow, profile: dict) -> float:
    """Seconds from the start of epoch 2 to the end of the run; adds the profile's seconds to ``profile``."""
    trainer, profiler, start = workflow.parser.get_parsed_content("train#trainer"), HandlersTimeProfiler(), []

    @trainer.on(Events.EPOCH_STARTED(once=2))
    def start_timing(engine):
        start.append(time.perf_counter())
        # wraps every handler registered by now, the resume point's too (registered when the run starts)
        profiler._as_first_started(engine)

    workflow.run()
    seconds = time.perf_counter() - start[0]
    for event, handlers in profiler.event_handlers_times.items():
        for name, times in handlers.items():
            if name != "bundle_run.<locals>.start_timing" and sum(times) > 0:
                profile[(getattr(event, "name", str(event)), name)] += sum(times)
    profile[("", "data loading")] += sum(profiler.dataflow_times)
    profile[("", "iteration")] += sum(profiler.processing_times)
    return seconds


def plain_run(workflow: ConfigWorkflow, profile: dict) -> float:
    """The same network, data loader, loss and optimizer in a hand-written loop; seconds of epochs 2 and later."""
    get = workflow.parser.get_parsed_content
    network, loader, loss_fn, optimizer, device = get("network"), get("train#dataloader"), get("loss"), get("optimizer"), get("device")
    amp, amp_kwargs = get("amp"), get("amp_kwargs")
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    network.train()
    for epoch in range(1, get("max_epochs") + 1):
        if epoch == 2:
            start = time.perf_counter()
        waiting = time.perf_counter()
        for batch in loader:
            loaded = time.perf_counter()
            optimizer.zero_grad()
            with torch.autocast(device.type, enabled=amp, **amp_kwargs):
                loss = loss_fn(network(batch["image"].to(device)), batch["label"].to(device))
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            done = time.perf_counter()
            if epoch >= 2:
                profile[("", "data loading")] += loaded - waiting
                profile[("", "iteration")] += done - loaded
            waiting = done
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(data: Path, root: Path, args, image_size: int) -> tuple[list[float], dict, dict, int]:
    """Alternating rounds of the bundle and the plain loop: (bundle / plain per round, bundle and plain profiles in
    seconds per epoch, number of training images)."""
    ratios, profiles, timed_epochs = [], {"bundle": defaultdict(float), "plain": defaultdict(float)}, args.epochs - 1
    for n in range(args.repeats):
        seconds = {}
        for name in ("bundle", "plain") if n % 2 == 0 else ("plain", "bundle"):
            workflow = bundle_workflow(root / f"{image_size}_{name}_{n}", data, args, image_size)
            run = bundle_run if name == "bundle" else plain_run
            seconds[name] = run(workflow, profiles[name])
            profiles[name][("", "total")] += seconds[name]
            n_train = len(workflow.parser.get_parsed_content("train#dataset"))
            del workflow
        ratios.append(seconds["bundle"] / seconds["plain"])
        print(f"{image_size} px, round {n + 1}: bundle {seconds['bundle']:.2f} s, plain {seconds['plain']:.2f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    for profile in profiles.values():
        for key in profile:
            profile[key] /= args.repeats * timed_epochs
    return ratios, profiles["bundle"], profiles["plain"], n_train


def print_profile(bundle: dict, plain: dict) -> None:
    """Seconds per epoch: the plain loop's data loading and step, the bundle's data loading, iteration (with its
    iteration-event handlers indented) and other handlers, largest first; what the rows leave of the total."""
    print(f"  {'where (event: handler)':64s} {'plain s':>8s} {'bundle s':>9s}")
    for key in (("", "data loading"), ("", "iteration")):
        print(f"  {key[1]:64s} {plain[key]:8.3f} {bundle[key]:9.3f}")
        if key[1] == "iteration":
            inside = sorted(((s, k) for k, s in bundle.items() if k[0] in ITERATION_EVENTS), reverse=True)
            for seconds, (event, name) in inside:
                print(f"    {event + ': ' + name:62s} {'':8s} {seconds:9.4f}")
    handlers = sorted(((s, k) for k, s in bundle.items() if k[0] and k[0] not in ITERATION_EVENTS), reverse=True)
    for seconds, (event, name) in handlers:
        print(f"  {event + ': ' + name:64s} {'':8s} {seconds:9.4f}")
    rest = {run: p[("", "total")] - p[("", "data loading")] - p[("", "iteration")] for run, p in (("plain", plain), ("bundle", bundle))}
    rest["bundle"] -= sum(s for s, _ in handlers)
    print(f"  {'the rest (engine, loop, epoch ends)':64s} {rest['plain']:8.3f} {rest['bundle']:9.3f}")
    print(f"  {'total':64s} {plain[('', 'total')]:8.3f} {bundle[('', 'total')]:9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--n-images", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="per run; epochs 2 and later are timed")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (bundle, plain)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 fills the data cache and is not timed")
    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_ham_like(Path(tmp) / "ham", n_images=args.n_images, image_size=(160, 120))
        for image_size in args.image_size:
            results[image_size] = compare(data, Path(tmp), args, image_size)
    device = "cuda" if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    for image_size, (ratios, bundle, plain, n_train) in results.items():
        timed = args.epochs - 1
        print(f"\nDenseNet121, {n_train} training images of 160x120 resized to {image_size} px, batch {args.batch_size}, {device}; "
              f"{args.repeats} rounds of {timed} timed epoch{'s' * (timed > 1)}, seconds per epoch (profile: mean over rounds)")
        print_profile(bundle, plain)
        median = statistics.median(ratios)
        print(f"  bundle / plain per round: {' '.join(f'{r:.3f}' for r in ratios)}; median {median:.3f}: "
              f"overhead {100 * (median - 1):+.1f}% (goal <= +10%)")


if __name__ == "__main__":
    main()
