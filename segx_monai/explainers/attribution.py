"""Input-attribution explainers (GradientSHAP, Integrated Gradients, Occlusion) and GradientSHAP baselines."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import captum.attr
import torch
from monai.networks.layers import gaussian_1d, separable_filtering
from torch import Tensor, nn

from .base import InputAttributionExplainer, explaining, selected_scores

REFERENCES = ("zeros", "blur")


def _check_reference(kind: str) -> str:
    if kind not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {kind!r}")
    return kind


def reference_images(inputs: Tensor, kind: str, blur_sigma: float) -> Tensor:
    """Per-input reference: ``"zeros"`` (all-zero image) or ``"blur"`` (Gaussian blur, sigma in pixels)."""
    if _check_reference(kind) == "zeros":
        return torch.zeros_like(inputs)
    kernel = gaussian_1d(torch.tensor(float(blur_sigma)), truncated=4.0).to(inputs)
    # replicate padding: zero padding would darken the borders of the reference
    return separable_filtering(inputs, [kernel] * (inputs.ndim - 2), mode="replicate")


def input_gradients(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Gradient of each sample's target logit with respect to its input (one forward, one backward)."""
    inputs = inputs.detach().requires_grad_()
    return torch.autograd.grad(selected_scores(model(inputs), targets).sum(), inputs)[0]


def saved_activation_bytes(model: nn.Module, inputs: Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward of ``model(inputs)``, parameters and buffers excluded.

    Counted on a forward on the meta device (shapes only: no memory, no compute, the model untouched); hand-written,
    as torch counts allocated memory on accelerators only."""
    state = {name: t.to("meta") for name, t in (*model.named_parameters(), *model.named_buffers())}
    fixed = {id(t.untyped_storage()) for t in state.values()}
    saved: dict[int, torch.UntypedStorage] = {}  # storages by id, kept alive so that ids stay unique

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()  # one Python object per storage, shared by its views
        if id(storage) not in fixed:
            saved[id(storage)] = storage
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        torch.func.functional_call(model, state, (inputs.detach().to("meta").requires_grad_(),))
    return sum(storage.nbytes() for storage in saved.values())


class GradientShap(InputAttributionExplainer):
    """GradientSHAP / expected gradients: mean over draws of ``(x - b) * d logit/dx`` at ``b + alpha (x - b)``.

    The estimator of captum's ``GradientShap`` (and shap's ``GradientExplainer``, as published: the
    50 reference images, ``n_samples=50``, ``stdevs=0``), hand-written because captum draws baselines
    and alpha from NumPy's global RNG per expanded row, so its maps change with batch composition and
    chunking, and expands all ``B * n_samples`` rows at once. Map = channel mean of ``|attribution|``.

    ``baselines``: a reference set ``(N, C, *spatial)`` (e.g. from :func:`build_baselines`), or
    ``"zeros"``/``"blur"`` for one reference per input. ``stdevs``: std of Gaussian noise added to the
    input at each draw (absolute units, as in captum).
    Randomness: for draw ``s = 0 .. n_samples-1`` the baseline index, ``alpha ~ U[0, 1)`` and the noise
    come from a CPU ``torch.Generator`` seeded with ``seed`` and are shared by all images of the batch,
    so a map depends only on (image, target, seed), never on batch, ``memory_mb`` or device; global
    RNGs are not touched.
    Memory: the ``B * n_samples`` (draw, image) rows go through the model in passes of as many rows as fit in
    ``memory_mb`` (MB), at the autograd memory of one row counted by :func:`saved_activation_bytes`, so the peak
    depends on neither ``n_samples``, ``B`` nor the image size; the backward's transient gradients add 5-10% on
    DenseNet121. A budget below one row is an error.
    """

    def __init__(
        self,
        model: nn.Module,
        baselines: Tensor | str = "zeros",
        n_samples: int = 50,
        stdevs: float = 0.0,
        memory_mb: float = 2048,
        seed: int = 0,
        blur_sigma: float = 5.0,
    ) -> None:
        super().__init__(model)
        if isinstance(baselines, str):
            _check_reference(baselines)
        elif baselines.ndim < 3 or len(baselines) == 0:
            raise ValueError(f"baselines must be a non-empty (N, C, *spatial) tensor, got {tuple(baselines.shape)}")
        if n_samples < 1:
            raise ValueError(f"n_samples (shap_samples) must be positive, got {n_samples!r}")
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, (int, float)) or not memory_mb > 0:
            raise ValueError(f"memory_mb (shap_memory_mb) must be a positive number of MB, got {memory_mb!r}")
        self.baselines = baselines
        self.n_samples = n_samples
        self.stdevs = stdevs
        self.memory_mb = memory_mb
        self.seed = seed
        self.blur_sigma = blur_sigma

    def rows_per_pass(self, inputs: Tensor) -> int:
        """How many (draw, image) rows of images like ``inputs[0]`` one forward/backward pass takes in ``memory_mb``."""
        with explaining(self.model):
            row_mb = saved_activation_bytes(self.model, inputs[:1].as_subclass(Tensor)) / 2**20  # eval, frozen
        if row_mb > self.memory_mb:
            raise ValueError(f"memory_mb (shap_memory_mb) = {self.memory_mb} MB is below the {row_mb:.4g} MB that one "
                             f"image of shape {tuple(inputs.shape[1:])} needs through the network; raise it")
        return int(self.memory_mb / row_mb) if row_mb else self.n_samples * len(inputs)

    def _draw(self, n_references: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Baseline indices ``(n_samples,)`` and interpolation coefficients ``(n_samples,)``."""
        index = torch.randint(n_references, (self.n_samples,), generator=generator)
        return index, torch.rand(self.n_samples, generator=generator)

    def _references(self, inputs: Tensor) -> Tensor:
        """References as ``(N, 1, C, *s)`` (a shared set) or ``(1, B, C, *s)`` (one per input)."""
        if isinstance(self.baselines, str):
            return reference_images(inputs, self.baselines, self.blur_sigma)[None]
        if self.baselines.shape[1:] != inputs.shape[1:]:
            raise ValueError(
                f"baselines have shape {tuple(self.baselines.shape[1:])} per image, inputs {tuple(inputs.shape[1:])}"
            )
        return self.baselines.to(inputs)[:, None]

    def attribute_inputs(self, inputs: Tensor, targets: Tensor) -> Tensor:
        batch, rows = len(inputs), self.n_samples * len(inputs)
        references = self._references(inputs)
        generator = torch.Generator().manual_seed(self.seed)
        index, alpha = self._draw(len(references), generator)
        index, alpha = index.to(inputs.device), alpha.to(inputs)
        per_pass = self.rows_per_pass(inputs)
        noise: dict[int, Tensor] = {}  # the draws of the current pass, drawn in order (independent of per_pass)
        total = torch.zeros_like(inputs)
        for start in range(0, rows, per_pass):
            row = torch.arange(start, min(start + per_pass, rows), device=inputs.device)
            draw, image = row // batch, row % batch
            points = inputs[image]
            if self.stdevs:
                first, last = int(draw[0]), int(draw[-1])
                noise = {s: noise[s] if s in noise else torch.randn(inputs.shape[1:], generator=generator)
                         for s in range(first, last + 1)}
                points = points + self.stdevs * torch.stack(list(noise.values())).to(inputs)[draw - first]
            base = references[index[draw], image % references.shape[1]]
            delta = points - base
            scaled = base + alpha[draw].view(-1, *[1] * (inputs.ndim - 1)) * delta
            total.index_add_(0, image, input_gradients(self.model, scaled, targets[image]) * delta)
        return total / self.n_samples


class IntegratedGradients(InputAttributionExplainer):
    """captum ``IntegratedGradients`` from a ``"zeros"`` or ``"blur"`` reference; map = channel mean of |attr|.

    ``chunk_size`` path steps are evaluated per forward pass (batches of at most ``B * chunk_size``).
    """

    def __init__(
        self,
        model: nn.Module,
        baselines: str = "zeros",
        n_steps: int = 50,
        chunk_size: int = 10,
        blur_sigma: float = 5.0,
    ) -> None:
        super().__init__(model)
        self.baselines = _check_reference(baselines)
        self.n_steps = n_steps
        self.chunk_size = chunk_size
        self.blur_sigma = blur_sigma

    def attribute_inputs(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return captum.attr.IntegratedGradients(self.model).attribute(
            inputs,
            baselines=reference_images(inputs, self.baselines, self.blur_sigma),
            target=targets,
            n_steps=self.n_steps,
            internal_batch_size=self.chunk_size * len(inputs),
        )


class Occlusion(InputAttributionExplainer):
    """captum ``Occlusion``: drop of the target logit when a window (all channels) is replaced by the reference.

    ``window``/``stride`` in pixels (voxels), the window clipped to the image; ``perturbations_per_eval``
    windows are evaluated per forward pass. Map = positive part of the drop: hiding evidence for the class
    lowers its logit, while hiding evidence against it gives negative values, which are discarded.
    """

    def __init__(
        self,
        model: nn.Module,
        window: int = 16,
        stride: int = 8,
        baselines: str = "zeros",
        perturbations_per_eval: int = 1,
        blur_sigma: float = 5.0,
    ) -> None:
        super().__init__(model)
        self.window = window
        self.stride = stride
        self.baselines = _check_reference(baselines)
        self.perturbations_per_eval = perturbations_per_eval
        self.blur_sigma = blur_sigma

    def attribute_inputs(self, inputs: Tensor, targets: Tensor) -> Tensor:
        channels, spatial = inputs.shape[1], inputs.shape[2:]
        return captum.attr.Occlusion(self.model).attribute(
            inputs,
            sliding_window_shapes=(channels, *(min(self.window, size) for size in spatial)),
            strides=(channels, *[self.stride] * len(spatial)),
            baselines=reference_images(inputs, self.baselines, self.blur_sigma),
            target=targets,
            perturbations_per_eval=self.perturbations_per_eval,
        )

    def reduce(self, attributions: Tensor) -> Tensor:
        return torch.relu(attributions.mean(dim=1, keepdim=True))


def build_baselines(dataset: Sequence, n: int = 50, key: str = "image", seed: int = 0) -> Tensor:
    """Stack ``n`` images drawn without replacement (seeded) from ``dataset`` into a GradientShap reference set.

    Draw them from the training split so that the set is fixed and disjoint from the evaluated images;
    items may be images or mappings holding the image under ``key`` (MONAI dictionary datasets).
    """
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([_image(dataset[int(i)], key) for i in order])


def _image(item, key: str) -> Tensor:
    """The image of a dataset item: the item itself, or its ``key`` entry (MONAI dictionary datasets)."""
    return torch.as_tensor(item[key] if isinstance(item, Mapping) else item).as_subclass(Tensor)


def save_baselines(images: Tensor, path: str | os.PathLike) -> None:
    """Save a reference set ``(N, C, *spatial)`` as a plain CPU tensor (loadable with ``weights_only=True``).

    Written to a temporary file and renamed, so processes of a distributed run that save the same set at once never
    leave a half-written file for another to read."""
    partial = f"{path}.{os.getpid()}.partial"
    torch.save(images.detach().as_subclass(Tensor).cpu().clone(), partial)
    os.replace(partial, path)


def load_baselines(path: str | os.PathLike) -> Tensor:
    """Load a reference set saved by :func:`save_baselines` onto the CPU."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no GradientSHAP reference images; the classifier's training draws them from the "
                                "training fold (train_classifier.yaml), or set baselines_file to a saved set")
    images = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(images, Tensor):
        raise TypeError(f"{path} does not hold a tensor")
    return images
