"""End-to-end interpretation of the ham_segx bundle against its floor, and what writing its files costs on the
critical path, written in the background or in the iteration.

    python benchmarks/bench_interpretation.py [--image-size 224] [--n-images 120] [--batch-size 16] [--repeats 3]
                                              [--threads 2]

Set-up: a synthetic HAM10000 folder (``segx_monai.data.synthetic_derm``, 600 x 450 JPEGs); the bundle's DenseNet121
and segmenter with their initial weights (the cost does not depend on training), saved where the interpretation
reads them, with the split they belong to; Grad-CAM; a review threshold given (no calibration run); sanity checks
off (they rerun the explainer on randomised networks: ``sanity_checks``). Rows, in ms per test image:

- ``workflow``: the ``interpreting`` run as the bundle runs it, from its start (the configs parsed, the networks
  built) to its folder swapped into place: loading, classifier, explainer, segmenter, SegX/SegU, localisation
  metrics, maps and overlays, samples.csv, run.json and the report; with the explanation saver writing in the
  background (the bundle's default) and in the iteration (``background: False``);
- ``floor``: classifier forward + backward of the predicted class's logit to Grad-CAM's layer + segmenter forward,
  on the same batches, already loaded;
- ``explanation files``: the explanation saver's time in the iteration (Ignite's ``HandlersTimeProfiler``), and the
  evaluator's other handlers in the background run, largest first; ``after the evaluator``: run.json, the report, the
  swap.

After one untimed run, each round runs the three in an order that rotates every round, so that a load shared with
other processes hits them alike; each figure is the median over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from ignite.handlers import HandlersTimeProfiler
from monai.bundle import ConfigParser, ConfigWorkflow

from segx_monai.data.fingerprint import WeightsWithSplit
from segx_monai.data.synthetic_derm import generate_ham_like

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "ham_segx" / "configs"
INTERPRET = ["inference.yaml", "interpret.yaml"]
SAVER = "segx_monai.handlers.savers.ExplanationSaver"
MODES = ("background", "in the iteration", "floor")


def interpret_workflow(root: Path, data: Path, args, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in INTERPRET], meta_file=str(CONFIGS / "metadata.json"), logging_file=False,
        workflow_type="infer", bundle_root=str(root), dataset_dir=str(data), image_size=args.image_size,
        inference_batch_size=args.batch_size, num_workers=0, sanity_checks=False, review_threshold=0.5, **overrides,
    )


def saver_background_key() -> str:
    """The config key of the explanation saver's ``background`` among interpret.yaml's writers."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in INTERPRET])
    (index,) = [n for n, writer in enumerate(parser["writers"]) if isinstance(writer, dict) and writer.get("_target_") == SAVER]
    return f"writers#{index}#background"


def save_initial_models(root: Path, data: Path, args) -> None:
    """The classifier and segmenter as built, saved as their trainings would, recording the split."""
    workflow = interpret_workflow(root, data, args)
    workflow.initialize()
    get = workflow.parser.get_parsed_content
    get("datalist")  # the split is drawn and saved here, before its record is read
    for network, path in ((get("network"), get("classifier_file")), (get("segmenter"), get("segmenter_file"))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(WeightsWithSplit(network, get("split_record")).state_dict(), path)


def workflow_run(root: Path, data: Path, args, name: str, profile: dict, **overrides) -> tuple[float, int]:
    """Seconds of one interpretation run and its number of images; adds its evaluator's handler seconds, and the time
    after the evaluator, to ``profile``."""
    workflow = interpret_workflow(root, data, args, interpret_dir=str(root / "interpret" / name), **overrides)
    workflow.initialize()
    evaluator, profiler = workflow.parser.get_parsed_content("evaluator"), HandlersTimeProfiler()
    profiler.attach(evaluator)
    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    for event, handlers in profiler.event_handlers_times.items():
        for handler, times in handlers.items():
            profile[f"{getattr(event, 'name', event)}: {handler}"] += sum(times)
    profile["after the evaluator"] += seconds - evaluator.state.times["COMPLETED"]
    return seconds, len(workflow.parser.get_parsed_content("dataset"))


def floor_run(root: Path, data: Path, args) -> float:
    """Classifier forward + backward of the predicted logits to Grad-CAM's layer + segmenter forward, on the
    interpretation's batches loaded beforehand, in its precision; seconds."""
    workflow = interpret_workflow(root, data, args)
    workflow.initialize()
    get = workflow.parser.get_parsed_content
    network, segmenter, device = get("network").eval(), get("segmenter").eval(), get("device")
    for model, path in ((network, get("classifier_file")), (segmenter, get("segmenter_file"))):
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    batches = [batch["image"] for batch in get("dataloader")]
    activations = []
    hook = network.get_submodule(get("gradcam_layer")).register_forward_hook(lambda module, args, output: activations.append(output))
    start = time.perf_counter()
    with torch.autocast(device.type, enabled=get("amp"), **get("amp_kwargs")):
        for images in batches:
            images, activations[:] = images.to(device), []
            logits = network(images)
            torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), activations[-1])
            with torch.no_grad():
                segmenter(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    hook.remove()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n-images", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=16, help="inference_batch_size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds, profiles = defaultdict(list), {mode: defaultdict(float) for mode in MODES[:2]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bundle"
        data = generate_ham_like(Path(tmp) / "ham", n_images=args.n_images, image_size=(600, 450))
        save_initial_models(root, data, args)
        in_place = {saver_background_key(): False}
        workflow_run(root, data, args, "warm-up", defaultdict(float))  # first-call costs (imports, file cache) go here
        for n in range(args.repeats):
            for mode in MODES[n % 3:] + MODES[: n % 3]:
                if mode == "floor":
                    seconds[mode].append(floor_run(root, data, args))
                    continue
                overrides = in_place if mode == "in the iteration" else {}
                run_seconds, n_images = workflow_run(root, data, args, f"{n}_{mode}", profiles[mode], **overrides)
                seconds[mode].append(run_seconds)
                print(f"round {n + 1}: {mode} {run_seconds:.2f} s", flush=True)

    per_image = {mode: 1000 * statistics.median(s) / n_images for mode, s in seconds.items()}
    per_run = {mode: {k: 1000 * v / (args.repeats * n_images) for k, v in profile.items()} for mode, profile in profiles.items()}
    device = "cuda" if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nham_segx interpretation, Grad-CAM, {n_images} test images of 600x450 at {args.image_size} px, batch {args.batch_size}, "
          f"{device}; median of {args.repeats} rounds")
    print(f"{'what':66s} {'ms/image':>9s} {'vs floor':>9s}")
    rows = [("floor: classifier forward + backward to Grad-CAM's layer, segmenter", per_image["floor"]),
            ("workflow, explanation files written in the background", per_image["background"]),
            ("workflow, explanation files written in the iteration", per_image["in the iteration"])]
    for name, ms in rows:
        print(f"{name:66s} {ms:9.1f} {ms / per_image['floor']:8.2f}x")
    saver = f"ITERATION_COMPLETED: {SAVER.rsplit('.', 1)[1]}"
    for mode in MODES[:2]:
        print(f"{'explanation files, time in the iteration (' + mode + ')':66s} {per_run[mode][saver]:9.1f}")
    print("evaluator handlers and what follows it, background run (mean over rounds):")
    for name, ms in sorted(per_run["background"].items(), key=lambda kv: -kv[1]):
        if name != saver and ms >= 0.05:
            print(f"  {name:64s} {ms:9.1f}")


if __name__ == "__main__":
    main()
