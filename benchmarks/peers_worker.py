"""pytorch-grad-cam's GradCAM and GradCAM++ for bench_peers.py, in the environment of ``benchmarks/peers_env.sh``; and
the time and memory measurements that both sides take alike.

    <python printed by peers_env.sh> benchmarks/peers_worker.py SETUP.pt

``SETUP.pt`` (written by bench_peers.py): the classifier's constructor arguments and weights, the target layer's name,
the images, their target classes and the thread count. Then one JSON request per line on stdin, one JSON answer per
line on stdout:

- ``{"method": M, "batch": B, "calls": n}`` -> ``{"seconds": s}``: M on the first B images, n times in a row;
- ``{"method": M, "batch": B, "measure": PATH}`` -> ``{"seconds": s, "peak_bytes": p}``: one call, whose maps
  ``(B, 1, H, W)`` go to PATH (torch.save), and its :func:`peak_memory`.

Only torch, monai and the standard library are imported at the top, so that bench_peers.py imports the helpers here
without pytorch-grad-cam.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

METHODS = ("GradCAM", "GradCAMPlusPlus")  # pytorch_grad_cam's class names


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(fn: Callable[[], object]) -> tuple[object, int]:
    """``fn()``'s result and the peak resident memory it added, in bytes: the process's high-water mark during the
    call (reset first through ``/proc/self/clear_refs``) minus its resident size before it, after ``malloc_trim`` has
    returned freed heap to the system (otherwise memory a previous call freed would hide this one's)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS")
    result = fn()
    return result, _status_bytes("VmHWM") - before


def timed(fn: Callable[[], object], calls: int) -> float:
    """Seconds that ``calls`` calls of ``fn`` in a row take."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def main() -> None:
    protocol, sys.stdout = sys.stdout, sys.stderr  # the answers only on stdout: anything printed goes to stderr
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # an import of that environment's
    from monai.networks.nets import DenseNet121
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    setup = torch.load(sys.argv[1], weights_only=False)
    torch.set_num_threads(setup["threads"])
    model = DenseNet121(**setup["network"]).eval()
    model.load_state_dict(setup["state"])
    layer = model.get_submodule(setup["target_layer"])
    cams = {name: getattr(pytorch_grad_cam, name)(model, target_layers=[layer]) for name in METHODS}
    images, classes = setup["images"], [ClassifierOutputTarget(int(c)) for c in setup["targets"]]
    with torch.no_grad():
        model(images[:1])  # first-call set-up (thread pools, kernels) belongs to no method

    for line in sys.stdin:
        request = json.loads(line)
        cam, batch = cams[request["method"]], request["batch"]

        def run() -> object:
            return cam(images[:batch], targets=classes[:batch])

        if "measure" in request:
            start = time.perf_counter()
            maps, peak = peak_memory(run)
            answer = {"seconds": time.perf_counter() - start, "peak_bytes": peak}
            torch.save(torch.from_numpy(maps)[:, None], request["measure"])
        else:
            answer = {"seconds": timed(run, request["calls"])}
        protocol.write(json.dumps(answer) + "\n")
        protocol.flush()


if __name__ == "__main__":
    main()
