"""COIN's generator training (Shvetsov et al., 2024) as a MONAI engine: a perturbation generator and a patch
discriminator trained against a frozen classifier, and what validation measures of the generator's counterfactuals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from ignite.metrics import Metric
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.losses import PatchAdversarialLoss
from monai.metrics import CumulativeIterationMetric
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from segx_monai.explainers.base import explaining
from segx_monai.explainers.counterfactual import Counterfactual
from segx_monai.metrics.classification import WarnOnce
from segx_monai.metrics.counterfactual import consistency_kl, counterfactual_validity, is_target, target_probability, total_variation

TERMS = ("adversarial", "consistency", "reconstruction", "total_variation")  # the generator's losses, in its output
D_LOSS = "d_loss"  # the discriminator's loss, in the output


class CounterfactualTrainer(Trainer):
    """Trains ``generator`` to turn each image of the batch into its counterfactual for ``target`` (a posterior
    ``(K,)``), and ``discriminator`` to tell counterfactuals from real images; ``classifier`` stays frozen, left exactly
    as found (modes, weights, ``requires_grad``, ``.grad``) by :func:`~segx_monai.explainers.base.explaining`.

    Per iteration: X_cf = G(X, target); a discriminator step on least-squares patch verdicts (real X, fake X_cf), then a
    generator step on ``adversarial_weight`` x (X_cf judged real) + ``consistency_weight`` x KL(target || classifier
    posterior on X_cf) + ``reconstruction_weight`` x (L1(G(X_cf), X_cf), a counterfactual being already of the target,
    plus L1(X_cf, X) on the samples whose label already is the target) + ``total_variation_weight`` x TV(X - X_cf).
    The output holds the image, label, counterfactual (``pred``), the generator's total ``loss``, each term and
    ``d_loss``. With ``amp``, the networks run under autocast with ``amp_kwargs``, one gradient scaler per optimizer.

    MONAI's ``GanTrainer`` does not fit: its generator's input is latent noise from ``g_prepare_batch(num_latents,
    latent_size, ...)``, never the batch's images (and ``AdversarialTrainer``'s generator loss sees no classifier).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        generator: nn.Module,
        discriminator: nn.Module,
        classifier: nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        target: Sequence[float] | Tensor,
        multi_label: bool,
        adversarial_weight: float = 1.0,
        consistency_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        total_variation_weight: float = 5e-5,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        super().__init__(
            device=device, max_epochs=max_epochs, data_loader=train_data_loader, epoch_length=epoch_length,
            non_blocking=non_blocking, prepare_batch=prepare_batch, key_metric=key_train_metric,
            additional_metrics=additional_metrics, handlers=train_handlers, amp=amp, to_kwargs=to_kwargs, amp_kwargs=amp_kwargs,
        )
        self.generator, self.discriminator, self.classifier = generator, discriminator, classifier
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.target, self.multi_label = torch.as_tensor(target, dtype=torch.float32), multi_label
        self.weights = dict(zip(TERMS, (adversarial_weight, consistency_weight, reconstruction_weight, total_variation_weight)))
        self.adversarial_loss = PatchAdversarialLoss(criterion="least_squares")
        self.optim_set_to_none = optim_set_to_none
        self.g_scaler, self.d_scaler = (torch.amp.GradScaler("cuda"), torch.amp.GradScaler("cuda")) if amp else (None, None)

    def amp_forward(self, network: nn.Module, *inputs: Tensor) -> Tensor:
        """``network(*inputs)`` (a discriminator's last, logit output), under autocast with ``amp_kwargs`` when
        ``amp``; in float32, so the losses are computed outside autocast (which refuses binary cross-entropy)."""
        with torch.autocast("cuda", **self.amp_kwargs) if self.amp else nullcontext():
            outputs = network(*inputs)
        return (outputs[-1] if isinstance(outputs, (list, tuple)) else outputs).float()

    def step(self, optimizer: Optimizer, scaler: torch.amp.GradScaler | None, loss: Tensor) -> None:
        """Backward ``loss`` and step ``optimizer`` (through ``scaler`` under AMP)."""
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def discriminator_loss(self, images: Tensor, counterfactuals: Tensor) -> Tensor:
        """Least-squares loss of the discriminator's last (logit) output: real images real, counterfactuals fake."""
        real = self.adversarial_loss(self.amp_forward(self.discriminator, images), target_is_real=True, for_discriminator=True)
        fake = self.adversarial_loss(self.amp_forward(self.discriminator, counterfactuals), target_is_real=False, for_discriminator=True)
        return (real + fake) / 2

    def generator_terms(self, images: Tensor, labels: Tensor, counterfactuals: Tensor, condition: Tensor) -> dict[str, Tensor]:
        """COIN's generator losses, unweighted, by name (:data:`TERMS`)."""
        already = is_target(labels, self.target)
        identity = F.l1_loss(counterfactuals[already], images[already]) if already.any() else counterfactuals.new_zeros(())
        return {
            "adversarial": self.adversarial_loss(self.amp_forward(self.discriminator, counterfactuals), target_is_real=True, for_discriminator=False),
            "consistency": consistency_kl(self.amp_forward(self.classifier, counterfactuals), self.target, self.multi_label),
            "reconstruction": F.l1_loss(self.amp_forward(self.generator, counterfactuals, condition), counterfactuals) + identity,
            "total_variation": total_variation(images - counterfactuals),
        }

    def _iteration(self, engine: CounterfactualTrainer, batchdata: dict | Sequence) -> dict[str, Tensor]:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        images, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        condition = engine.target.to(images.device).expand(images.shape[0], -1)
        engine.state.output = output = {Keys.IMAGE: images, Keys.LABEL: labels}
        engine.generator.train()
        engine.discriminator.train()
        with explaining(engine.classifier):
            counterfactuals = output[Keys.PRED] = engine.amp_forward(engine.generator, images, condition)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)

            engine.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            d_loss = engine.discriminator_loss(images, counterfactuals.detach())
            engine.step(engine.d_optimizer, engine.d_scaler, d_loss)

            engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            terms = engine.generator_terms(images, labels, counterfactuals, condition)
            loss = sum(engine.weights[name] * value for name, value in terms.items())
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            engine.step(engine.g_optimizer, engine.g_scaler, loss)
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        output.update({Keys.LOSS: loss.detach(), D_LOSS: d_loss.detach(), **{name: value.detach() for name, value in terms.items()}})
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # decollates engine.state.output
        return engine.state.output


class CounterfactualOutcome(nn.Module):
    """The classifier's logits on the images and on their counterfactuals, ``(B, 2, K)``: what validation measures
    from one network call, so that MONAI's ``SupervisedEvaluator`` and metric handlers run unchanged.

    Classifier and generator run in eval mode without gradients and are left as found; ``train``/``eval`` set this
    wrapper's own flag only (the evaluator's ``eval_mode`` restores a flag by ``train()``, which would otherwise put
    the frozen classifier in train mode).
    """

    def __init__(self, classifier: nn.Module, generator: nn.Module, target: Sequence[float] | Tensor) -> None:
        super().__init__()
        self.classifier, self.generator = classifier, generator
        self.explainer = Counterfactual(classifier, generator, target)

    def train(self, mode: bool = True) -> CounterfactualOutcome:
        self.training = mode
        return self

    def forward(self, images: Tensor) -> Tensor:
        counterfactuals = self.explainer.counterfactuals(images)
        with explaining(self.classifier), torch.no_grad():
            logits = self.classifier(torch.cat([images, counterfactuals.to(images.dtype)]))
        return logits.reshape(2, images.shape[0], -1).transpose(0, 1)


def outcome_probabilities(logits: Tensor, target: Tensor, multi_label: bool) -> Tensor:
    """``(B, 2)`` the target probability before and after from :class:`CounterfactualOutcome`'s ``(B, 2, K)`` logits;
    for a target of no finding, of the finding the classifier found most probable before."""
    probs = logits.float().sigmoid() if multi_label else logits.float().softmax(dim=2)
    target = target.to(probs.device)
    classes = probs[:, 0].argmax(dim=1)
    return torch.stack([target_probability(probs[:, i], target, classes) for i in (0, 1)], dim=1)


class CounterfactualValidity(CumulativeIterationMetric):
    """COIN's counterfactual validity over an epoch (:func:`counterfactual_validity` with ``confidence`` and ``tau``)
    from :class:`CounterfactualOutcome`'s logits; NaN without a confidently abnormal sample, with a warning (once), and
    model selection ranks NaN lowest."""

    def __init__(self, target: Sequence[float] | Tensor, multi_label: bool, confidence: float = 0.8, tau: float = 0.8) -> None:
        super().__init__()
        self.target, self.multi_label = torch.as_tensor(target, dtype=torch.float32), multi_label
        self.confidence, self.tau, self.warn = confidence, tau, WarnOnce()

    def _compute_tensor(self, y_pred: Tensor, y: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return outcome_probabilities(y_pred, self.target, self.multi_label)

    def aggregate(self) -> Tensor:  # type: ignore[override]
        probabilities = self.get_buffer()
        validity, n = counterfactual_validity(probabilities[:, 0], probabilities[:, 1], self.confidence, self.tau)
        if n == 0:
            self.warn(f"no sample of the {len(probabilities)} has a target probability <= 1 - confidence ({1 - self.confidence:g}): "
                      "counterfactual validity is NaN.")
        return torch.tensor(validity, dtype=torch.float64)


class CounterfactualLoss(CumulativeIterationMetric):
    """The mean KL consistency (:func:`consistency_kl`) of the classifier on the counterfactuals over an epoch, from
    :class:`CounterfactualOutcome`'s logits: how far they are from the target posterior (ties of validity)."""

    def __init__(self, target: Sequence[float] | Tensor, multi_label: bool) -> None:
        super().__init__()
        self.target, self.multi_label = torch.as_tensor(target, dtype=torch.float32), multi_label

    def _compute_tensor(self, y_pred: Tensor, y: Tensor | None = None) -> Tensor:  # type: ignore[override]
        after = y_pred[:, 1].float()
        return torch.stack([consistency_kl(logits[None], self.target, self.multi_label) for logits in after])[:, None]

    def aggregate(self) -> Tensor:  # type: ignore[override]
        return self.get_buffer().double().mean()
