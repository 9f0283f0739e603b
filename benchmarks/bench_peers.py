"""This package's explainers beside their peers, in one run: same network, target layer, inputs, targets and threads.

    python benchmarks/bench_peers.py [--image-sizes 224 64] [--batch-sizes 1 16] [--repeats 5] [--shap-repeats 3]
                                     [--n-samples 50] [--threads N] [--gradcam-python PATH]

Set-up per image size: the bundles' classifier (``build_classifier("densenet121")``: MONAI DenseNet121, 3 -> 7
classes, random weights, eval mode), the Grad-CAM target layer ``class_layers.relu``, 16 random images and their
predicted classes, 50 random GradientSHAP references; a variant at batch B explains the first B images. Methods, each
set beside this package's method that makes the same map:

- segx-monai ``Grad-CAM``, ``Grad-CAM++``, ``GradientSHAP`` (``get_explainer``);
- pytorch-grad-cam ``GradCAM``, ``GradCAMPlusPlus`` (PyPI ``grad-cam``): it imports torchvision, so it runs in an
  environment of its own (``benchmarks/peers_env.sh``, or ``--gradcam-python``) in ``benchmarks/peers_worker.py``, on
  the same weights, images and targets, handed over in a temporary file;
- captum ``LayerGradCam`` + ``LayerAttribution.interpolate`` (bilinear) + min-max, and ``GradientShap`` (the same
  references, draws and ``stdevs=0``; the images in chunks of as many as this package's SHAP memory budget holds, at
  least one, as captum sends all B x draws rows through the network at once);
- MONAI ``monai.visualize.GradCAM`` and ``GradCAMpp``, default settings (on a copy of the network: they leave hooks
  and an out-of-place target layer on it);
- ``SegX + SegU + metrics``: the interpretation handlers that follow the explainer (SegXMaps, SegUScores,
  LocalizationScores) on this package's Grad-CAM maps, with a disk-shaped region and ground truth per image; its
  ratio is its time as a share of Grad-CAM's.

Agreement first: per image, Pearson's r between a peer's map and this package's, both min-max normalised (mean and
minimum over the images of the largest batch), and their largest absolute difference; notes say where the maps differ
by design. The GradientSHAP estimators draw at random: this package's own map with another seed gives the noise floor.
Timings: every variant runs once (maps, peak memory), then in interleaved rounds whose order rotates every round (the
pytorch-grad-cam worker's requests included), so that a load shared with other processes hits them alike; a fast
variant repeats its call within a round until the sample lasts ``--min-sample-s``. ms/image is the median over the
rounds; peak MB the resident memory the call added at its peak (``peers_worker.peak_memory``); ratio = ms/image of the
row / ms/image of this package's method that makes the same map, same size and batch (above 1: this package is faster).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import captum.attr
import monai.visualize
import torch
from torch import Tensor, nn

from bench_explain import disk_masks  # this folder's: run as a script
from peers_worker import peak_memory, timed
from segx_monai.core.maps import minmax_normalize
from segx_monai.explainers import get_explainer
from segx_monai.handlers.segx import LocalizationScores, SegUScores, SegXMaps
from segx_monai.networks.classifiers import build_classifier

HERE = Path(__file__).resolve().parent
N_CLASSES, N_IMAGES, N_FLOOR = 7, 16, 4  # classes, images, images of the GradientSHAP noise floor
NETWORK = {"spatial_dims": 2, "in_channels": 3, "out_channels": N_CLASSES}  # DenseNet121's, as build_classifier makes it
TARGET_LAYER = "class_layers.relu"
OURS = {"gc": "segx-monai Grad-CAM", "gcpp": "segx-monai Grad-CAM++", "shap": "segx-monai GradientSHAP"}
POST = "SegX + SegU + metrics"
GOAL_POST_SHARE, GOAL_POST_SIZE = 0.05, 224


def inverted(maps: Tensor) -> Tensor:
    """Maps turned the other way up (MONAI's default normaliser makes the most relevant pixel 0)."""
    return 1 - maps


class Method:
    """One variant: ``measure(batch) -> (maps or None, seconds, peak bytes)`` of one call, ``time(batch, calls) ->
    seconds``; ``same_as`` names this package's method that makes the same map, ``oriented`` turns the maps as it
    does them and ``note`` says how they differ by design."""

    def __init__(self, name: str, explain: Callable[[int], Tensor | None], same_as: str | None = None, note: str = "",
                 shap: bool = False, oriented: Callable[[Tensor], Tensor] = lambda maps: maps) -> None:
        self.name, self.explain, self.same_as, self.note, self.shap, self.oriented = name, explain, same_as, note, shap, oriented

    def measure(self, batch: int) -> tuple[Tensor | None, float, int]:
        start = time.perf_counter()
        maps, peak = peak_memory(lambda: self.explain(batch))
        return maps, time.perf_counter() - start, peak

    def time(self, batch: int, calls: int) -> float:
        return timed(lambda: self.explain(batch), calls)


class WorkerMethod(Method):
    """A pytorch-grad-cam method, asked of ``peers_worker.py`` in its own environment."""

    def __init__(self, name: str, worker: Worker, method: str, same_as: str, note: str) -> None:
        super().__init__(name, lambda batch: None, same_as, note)
        self.worker, self.method = worker, method

    def measure(self, batch: int) -> tuple[Tensor | None, float, int]:
        path = self.worker.folder / f"{self.method}-{batch}.pt"
        answer = self.worker.ask(method=self.method, batch=batch, measure=str(path))
        return torch.load(path), answer["seconds"], answer["peak_bytes"]

    def time(self, batch: int, calls: int) -> float:
        return self.worker.ask(method=self.method, batch=batch, calls=calls)["seconds"]


class Worker:
    """``peers_worker.py`` under ``python``, on the set-up saved in ``folder``; one JSON line each way per request."""

    def __init__(self, python: str, folder: Path, setup: dict) -> None:
        self.folder = folder
        torch.save(setup, folder / "setup.pt")
        self.process = subprocess.Popen([python, str(HERE / "peers_worker.py"), str(folder / "setup.pt")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"peers_worker.py ended (exit status {self.process.wait()}) on {request}; see its stderr above")
        return json.loads(answer)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def gradcam_python(given: str | None) -> str:
    """The python of pytorch-grad-cam's environment: ``given``, ``$SEGX_GRADCAM_PYTHON``, or ``peers_env.sh``'s."""
    if given or os.environ.get("SEGX_GRADCAM_PYTHON"):
        return given or os.environ["SEGX_GRADCAM_PYTHON"]
    return subprocess.run([str(HERE / "peers_env.sh")], check=True, stdout=subprocess.PIPE, text=True).stdout.split()[-1]


def agreement(maps: Tensor, reference: Tensor) -> tuple[float, float, float]:
    """Mean and minimum over the images of Pearson's r between two batches of maps, both min-max normalised, and their
    largest absolute difference; r is NaN for a constant map (at 32 px DenseNet121's last feature map is 1 x 1)."""
    a, b = (minmax_normalize(m.detach().float()).flatten(1) for m in (maps, reference))
    ac, bc = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = (ac * bc).sum(1) / (ac.norm(dim=1) * bc.norm(dim=1))
    return float(r.nanmean()), float(r.min()), float((a - b).abs().max())


def segx_handlers(images: Tensor, targets: Tensor, maps: Callable[[int], Tensor], seed: int) -> Callable[[int], None]:
    """The interpretation handlers after the explainer on the first B images' Grad-CAM maps, as the evaluator hands
    them over: decollated items with a region probability, batch items with a ground-truth mask (disks, two draws)."""
    generator = torch.Generator().manual_seed(seed)
    n, size = len(images), images.shape[-1]
    regions, truths = 0.9 * disk_masks(n, size, generator), disk_masks(n, size, generator)
    handlers = [SegXMaps(), SegUScores(), LocalizationScores(gt_key="mask")]
    handlers[-1].reset()

    def run(batch: int) -> None:
        state = SimpleNamespace(
            output=[{"map": m[None], "explained_classes": [int(c)], "region_prob": r}
                    for m, c, r in zip(maps(batch), targets, regions)],
            batch=[{"mask": mask} for mask in truths[:batch]],
        )
        for handler in handlers:
            handler(SimpleNamespace(state=state))

    return run


def methods_for_size(model: nn.Module, images: Tensor, targets: Tensor, baselines: Tensor, args: argparse.Namespace,
                     worker: Worker) -> list[Method]:
    """Every variant of one image size, this package's first."""
    layer = model.get_submodule(TARGET_LAYER)
    ours = {key: get_explainer(name, model, **kwargs) for key, name, kwargs in (
        ("gc", "gradcam", {}), ("gcpp", "gradcampp", {}),
        ("shap", "gradient_shap", {"baselines": baselines, "n_samples": args.n_samples}))}
    gradcam_maps = {b: ours["gc"](images[:b], targets[:b]) for b in args.batch_sizes}  # the SegX handlers' input
    captum_gc, captum_shap = captum.attr.LayerGradCam(model, layer), captum.attr.GradientShap(model)
    per_call = max(1, min(N_IMAGES, ours["shap"].rows_per_pass(images) // args.n_samples))
    monai_model = copy.deepcopy(model)
    monai_gc = monai.visualize.GradCAM(monai_model, TARGET_LAYER)
    monai_gcpp = monai.visualize.GradCAMpp(monai_model, TARGET_LAYER)

    def captum_layer_gradcam(batch: int) -> Tensor:
        x = images[:batch]
        maps = captum_gc.attribute(x, target=targets[:batch], relu_attributions=True)
        return minmax_normalize(captum.attr.LayerAttribution.interpolate(maps, x.shape[2:], interpolate_mode="bilinear"))

    def captum_gradient_shap(batch: int) -> Tensor:
        parts = [captum_shap.attribute(x, baselines=baselines, n_samples=args.n_samples, stdevs=0.0, target=t)
                 for x, t in zip(images[:batch].split(per_call), targets[:batch].split(per_call))]
        return minmax_normalize(torch.cat(parts).abs().mean(dim=1, keepdim=True))

    def ours_call(key: str) -> Callable[[int], Tensor]:
        return lambda batch: ours[key](images[:batch], targets[:batch])

    monai_note = ("default normaliser inverts the map (compared as 1 - map); the class score sums each image's logit "
                  "of every class chosen in the batch")
    return [
        Method(OURS["gc"], ours_call("gc")),
        Method(OURS["gcpp"], ours_call("gcpp")),
        Method(OURS["shap"], ours_call("shap"), shap=True),
        WorkerMethod("pytorch-grad-cam GradCAM", worker, "GradCAM", OURS["gc"],
                     "min-max on the feature grid (eps 1e-7), cv2 resize, min-max again"),
        WorkerMethod("pytorch-grad-cam GradCAM++", worker, "GradCAMPlusPlus", OURS["gcpp"], "eps 1e-6 in alpha"),
        Method("captum LayerGradCam + upsampling", captum_layer_gradcam, OURS["gc"]),
        Method("captum GradientShap", captum_gradient_shap, OURS["shap"], f"its own draws; {per_call} image(s) per call",
               shap=True),
        Method("MONAI GradCAM", lambda batch: monai_gc(images[:batch]), OURS["gc"], monai_note, oriented=inverted),
        Method("MONAI GradCAMpp", lambda batch: monai_gcpp(images[:batch]), OURS["gcpp"],
               monai_note + "; alpha's denominator sums A g^3 over positions (the paper: sum of A times g^3); "
               "exp(class score), a (B, B) matrix for a batch, broadcast against the gradient",
               oriented=inverted),
        Method(POST, segx_handlers(images, targets, gradcam_maps.__getitem__, args.seed), OURS["gc"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[224, 64], help="square image sides (224; the demo's 64)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, N_IMAGES], help=f"batches (at most {N_IMAGES})")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the CAM methods and the SegX handlers")
    parser.add_argument("--shap-repeats", type=int, default=3, help="timed rounds of the GradientSHAP methods")
    parser.add_argument("--n-samples", type=int, default=50, help="GradientSHAP draws per image")
    parser.add_argument("--n-baselines", type=int, default=50, help="GradientSHAP reference images")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads, both environments (default: all cores)")
    parser.add_argument("--min-sample-s", type=float, default=0.25, help="fast variants: calls per sample to last this long")
    parser.add_argument("--gradcam-python", help="python of pytorch-grad-cam's environment (default: $SEGX_GRADCAM_PYTHON, else peers_env.sh's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not all(1 <= b <= N_IMAGES for b in args.batch_sizes):
        parser.error(f"--batch-sizes must lie in [1, {N_IMAGES}], got {args.batch_sizes}")
    torch.set_num_threads(args.threads)
    python = gradcam_python(args.gradcam_python)
    largest = max(args.batch_sizes)
    model = build_classifier("densenet121", num_classes=N_CLASSES).eval()
    print(f"DenseNet121 (target layer {TARGET_LAYER}), {N_IMAGES} images per size, GradientSHAP {args.n_samples} draws x "
          f"{args.n_baselines} references, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}",
          flush=True)

    wall = time.perf_counter()
    rows, agreements, failures = {}, [], {}
    for size in args.image_sizes:
        generator = torch.Generator().manual_seed(args.seed)
        images = torch.randn(N_IMAGES, 3, size, size, generator=generator)
        baselines = torch.randn(args.n_baselines, 3, size, size, generator=generator)
        with torch.no_grad():
            targets = model(images).argmax(1)
        with tempfile.TemporaryDirectory() as folder:
            worker = Worker(python, Path(folder), {"network": NETWORK, "state": model.state_dict(), "images": images,
                                                  "targets": targets, "target_layer": TARGET_LAYER, "threads": args.threads})
            try:
                methods = methods_for_size(model, images, targets, baselines, args, worker)
                by_name = {m.name: m for m in methods}
                maps, calls = {}, {}
                for method in methods:
                    for b in args.batch_sizes:
                        try:
                            maps[method.name, b], seconds, peak = method.measure(b)
                        except Exception as error:  # a peer that cannot explain this batch: reported, not timed
                            failures[size, method.name, b] = f"{type(error).__name__}: {str(error).splitlines()[0][:90]}"
                            continue
                        rows[size, method.name, b] = {"peak_mb": peak / 2**20, "seconds": []}
                        calls[method.name, b] = 1 if method.shap else max(1, math.ceil(args.min_sample_s / seconds))
                    print(f"  {size} px: {method.name} measured ({time.perf_counter() - wall:.0f} s)", flush=True)
                for method in methods:
                    if method.same_as and maps.get((method.name, largest)) is not None:
                        agreements.append((size, method.name, method.same_as, method.note,
                                           agreement(method.oriented(maps[method.name, largest]), maps[method.same_as, largest])))
                floor = get_explainer("gradient_shap", model, baselines=baselines, n_samples=args.n_samples, seed=args.seed + 1)
                n_floor = min(largest, N_FLOOR)
                agreements.append((size, f"{OURS['shap']}, another seed", OURS["shap"], f"noise floor, {n_floor} images",
                                   agreement(floor(images[:n_floor], targets[:n_floor]), maps[OURS["shap"], largest][:n_floor])))

                keys = list(calls)
                for round_ in range(max(args.repeats, args.shap_repeats)):
                    shift = round_ % len(keys)
                    for name, b in keys[shift:] + keys[:shift]:
                        if round_ < (args.shap_repeats if by_name[name].shap else args.repeats):
                            rows[size, name, b]["seconds"].append(by_name[name].time(b, calls[name, b]) / (calls[name, b] * b))
                    print(f"  {size} px: round {round_ + 1} done ({time.perf_counter() - wall:.0f} s)", flush=True)
            finally:
                worker.close()

    print(f"\nagreement with this package's map at batch {largest} (Pearson r of min-max normalised maps, per image)")
    print(f"{'size':>4s} {'method':36s} {'mean r':>7s} {'min r':>7s} {'max |diff|':>10s}  vs / differs by design")
    for size, name, same_as_name, note, (mean_r, min_r, diff) in agreements:
        note = "; ".join(n for n in (note, "constant maps: a 1 x 1 feature grid" if math.isnan(mean_r) else "") if n)
        print(f"{size:4d} {name:36s} {mean_r:7.4f} {min_r:7.4f} {diff:10.4f}  {same_as_name}{'; ' + note if note else ''}")
    for (size, name, b), error in failures.items():
        print(f"{size:4d} {name:36s} batch {b}: failed, {error}")

    ms = {key: 1000 * statistics.median(row["seconds"]) for key, row in rows.items()}
    same_as = {m.name: m.same_as for m in methods}
    print(f"\n{'size':>4s} {'method':36s} {'batch':>5s} {'ms/image':>10s} {'images/s':>9s} {'peak MB':>8s} {'ratio':>7s}  vs")
    for size, name, b in rows:
        ref = (size, same_as[name], b)
        ratio = f"{ms[size, name, b] / ms[ref]:6.2f}x" if ref in ms and same_as[name] else "     - "
        print(f"{size:4d} {name:36s} {b:5d} {ms[size, name, b]:10.1f} {1000 / ms[size, name, b]:9.2f} "
              f"{rows[size, name, b]['peak_mb']:8.0f} {ratio:>7s}  {same_as[name] or ''}")
    print("ratio = ms/image of the row / ms/image of the 'vs' method, same size and batch (above 1: this package is faster)")

    print(f"\ngoals (batch {largest})")
    for size in args.image_sizes:
        for name in (m.name for m in methods if m.same_as and m.name != POST):
            ref = (size, same_as[name], largest)
            if (size, name, largest) in ms and ref in ms:
                ratio = ms[size, name, largest] / ms[ref]
                print(f"  {size:3d} px  {same_as[name]} vs {name}: {ratio:5.2f}x its time (goal >= 1)  {'PASS' if ratio >= 1 else 'FAIL'}")
        if (size, POST, largest) in ms:
            share = ms[size, POST, largest] / ms[size, OURS["gc"], largest]
            verdict = ("PASS" if share <= GOAL_POST_SHARE else "FAIL") if size == GOAL_POST_SIZE else "(goal at 224 px)"
            print(f"  {size:3d} px  {POST}: {100 * share:.1f}% of Grad-CAM's time (goal <= {100 * GOAL_POST_SHARE:.0f}%)  {verdict}")
    print(f"total {time.perf_counter() - wall:.0f} s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
