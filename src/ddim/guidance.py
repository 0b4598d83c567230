"""Guidance as model wrappers: each turns a model and its options into a model, so loops take just ``model``.

- :class:`ClassifierFreeGuidance` (Ho & Salimans, arXiv 2207.12598): m = m_u + s (m_c - m_u), then optionally
  :func:`rescale_noise_cfg` (arXiv 2305.08891, sec. 3.4);
- :class:`CFGPlusPlus` (Chung et al., arXiv 2406.08070): x0 from the guided output, the step renoising with the
  unconditional one;
- :class:`ClassifierGuidance` (Dhariwal & Nichol, arXiv 2105.05233, Algorithm 2):
  eps <- eps - sqrt(1 - alpha_bar_t) w grad_x log p(y | x_t), expressed on the model's output type;
- inpainting: :class:`ddim.inpainting.Inpainting`.

``ddim.sample``, ``ddim.invert`` and ``ddim.sample_exact`` also take the old keywords (``guidance_scale``,
``unconditional_model``, ``guidance_rescale``; for ``sample`` also ``classifier_gradient``,
``classifier_scale``, ``known``, ``known_mask``): the short form, turned into these wrappers by
:func:`wrap_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import torch

from ddim.inpainting import inpainting
from ddim.model import Model, ModelWrapper, Prediction, check_shape
from ddim.prediction import PREDICTION_TYPES, prediction_coefficients
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_choice, check_real

#: ``classifier_gradient(x_t, t) -> grad_{x_t} log p(y | x_t)``, same shape as x_t.
GradientFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rescale_noise_cfg(
    noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Rescale a guided prediction to the per-sample std of the conditional one (arXiv 2305.08891, sec. 3.4).

    rescaled = noise_cfg * std(noise_pred_text) / std(noise_cfg), stds over all but the batch dim;
    result = guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg. A value of 0 returns
    ``noise_cfg`` unchanged in value; 0.7 is the paper's recommendation against over-exposure.
    """
    if not 0.0 <= float(guidance_rescale) <= 1.0:
        raise ArgumentValueError(f"guidance_rescale={guidance_rescale!r} is out of range; allowed values are 0..1")
    if noise_cfg.shape != noise_pred_text.shape:
        raise ArgumentValueError(
            f"noise_cfg shape {tuple(noise_cfg.shape)} and noise_pred_text shape "
            f"{tuple(noise_pred_text.shape)} must be equal"
        )
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


@dataclass(frozen=True)
class ClassifierFreeGuidance(ModelWrapper):
    """m = m_u + scale (m_c - m_u) (arXiv 2207.12598), then :func:`rescale_noise_cfg` with ``rescale`` > 0.

    ``model`` is the conditional model, ``unconditional_model`` the unconditional one (called only when
    ``scale != 1`` or ``rescale > 0``); both get the same ``(x_t, t, **extra)``.
    """

    model: Model
    unconditional_model: Model | None
    scale: float = 1.0
    rescale: float = 0.0

    def __post_init__(self) -> None:
        check_real("guidance_scale", self.scale)
        check_real("guidance_rescale", self.rescale, 0.0, 1.0)
        if self.unconditional_model is None and self.active:
            raise ArgumentValueError(
                f"guidance_scale={self.scale!r} / guidance_rescale={self.rescale!r} need an unconditional "
                "branch: pass unconditional_model (or leave guidance_scale=1.0 and guidance_rescale=0.0)"
            )

    @property
    def active(self) -> bool:
        """Whether the unconditional model is called (at scale 1 without rescale the output is the conditional one)."""
        return self.scale != 1.0 or self.rescale != 0.0

    def predict(self, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> Prediction:
        conditional = check_shape("model", self.model(x, t, **extra), x)
        if self.unconditional_model is None or not self.active:
            return Prediction(conditional)
        unconditional = check_shape("unconditional_model", self.unconditional_model(x, t, **extra), x)
        guided = unconditional + self.scale * (conditional - unconditional)
        if self.rescale > 0:
            guided = rescale_noise_cfg(guided, conditional, self.rescale)
        return Prediction(guided)


@dataclass(frozen=True)
class CFGPlusPlus(ModelWrapper):
    """CFG++ (Chung et al., arXiv 2406.08070): x0 from m_lambda = m_u + lambda (m_c - m_u), lambda in [0, 1],
    and the step renoises with the unconditional m_u instead of m_lambda (:func:`ddim.paper_step.cfg_pp_step`).

    The loops of this package (``sample``, ``invert``, ``sample_exact``, the log-prob step through
    ``renoise_model_output``) take both parts from :meth:`predict`. Called as a plain model it returns
    m_lambda, so a loop that knows nothing of CFG++ runs plain CFG at scale lambda instead.
    """

    model: Model
    unconditional_model: Model
    scale: float = 0.6

    def __post_init__(self) -> None:
        check_real("guidance_scale", self.scale, 0.0, 1.0)
        if not callable(self.unconditional_model):
            raise ArgumentTypeError(
                f"CFG++ needs an unconditional model, got unconditional_model={self.unconditional_model!r}"
            )

    def predict(self, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> Prediction:
        conditional = check_shape("model", self.model(x, t, **extra), x)
        unconditional = check_shape("unconditional_model", self.unconditional_model(x, t, **extra), x)
        return Prediction(unconditional + self.scale * (conditional - unconditional), renoise=unconditional)


@dataclass(frozen=True)
class ClassifierGuidance(ModelWrapper):
    """eps <- eps - sqrt(1 - alpha_bar_t) scale grad log p(y | x_t) (arXiv 2105.05233, Algorithm 2).

    ``gradient(x_t, t)`` returns grad_{x_t} log p(y | x_t) (called with autograd enabled on a detached x_t).
    At fixed x_t eps = eps_x x_t + eps_m m (:func:`ddim.prediction.prediction_coefficients`), so the shift
    of eps becomes a shift of the output m by the same over eps_m; ``alphas_cumprod`` and
    ``prediction_type`` are the scheduler's.
    """

    model: Model
    gradient: GradientFn
    alphas_cumprod: torch.Tensor
    prediction_type: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_real("classifier_scale", self.scale)
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        if not callable(self.gradient):
            raise ArgumentTypeError(f"classifier_gradient must be callable, got {type(self.gradient).__name__}")

    def predict(self, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> Prediction:
        inner = self.model
        prediction = (
            inner.predict(x, t, **extra) if isinstance(inner, ModelWrapper) else Prediction(inner(x, t, **extra))
        )
        output = check_shape("model", prediction.output, x)
        with torch.enable_grad():
            gradient = check_shape("classifier_gradient", self.gradient(x.detach(), t), x)
        alpha = self.alphas_cumprod.to(device=t.device, dtype=torch.float64)[t.reshape(-1)]
        eps_m = prediction_coefficients(alpha, self.prediction_type)[3]
        shift = (-(1 - alpha).sqrt() * self.scale / eps_m).reshape(-1, *([1] * (x.ndim - 1)))
        return Prediction(output + shift.to(output.dtype) * gradient.to(output.dtype), prediction.renoise)


class ClassifierFreeKeywords(TypedDict, total=False):
    """The short form of classifier-free guidance a loop takes as keywords (see :func:`wrap_model`)."""

    guidance_scale: float
    unconditional_model: Model | None
    guidance_rescale: float


class GuidanceKeywords(ClassifierFreeKeywords, total=False):
    """The short form of guidance and inpainting ``ddim.sample`` takes as keywords (see :func:`wrap_model`)."""

    classifier_gradient: GradientFn | None
    classifier_scale: float
    known: torch.Tensor | None
    known_mask: torch.Tensor | None


#: The short-form keywords of classifier-free guidance (what ``invert`` and ``sample_exact`` take).
CFG_KEYWORDS = tuple(sorted(ClassifierFreeKeywords.__optional_keys__))


def wrap_model(
    model: Model,
    scheduler: Any,
    keywords: Mapping[str, Any],
    allowed: tuple[str, ...] = tuple(sorted(GuidanceKeywords.__optional_keys__)),
    caller: str = "sample",
) -> Model:
    """``model`` wrapped as the short-form keywords ask: classifier-free guidance, then classifier guidance,
    then inpainting (``known``/``known_mask``).

    Keywords other than ``allowed`` raise ``TypeError`` as an unknown keyword argument of ``caller`` would.
    """
    unknown = sorted(set(keywords) - set(allowed))
    if unknown:
        raise ArgumentTypeError(f"{caller}() got unexpected keyword arguments {unknown}")
    scale = keywords.get("guidance_scale", 1.0)
    rescale = keywords.get("guidance_rescale", 0.0)
    unconditional = keywords.get("unconditional_model")
    guided = ClassifierFreeGuidance(model, unconditional, scale, rescale)
    wrapped: Model = guided if guided.active else model
    gradient = keywords.get("classifier_gradient")
    classifier_scale = keywords.get("classifier_scale", 1.0)
    check_real("classifier_scale", classifier_scale)
    if gradient is not None:
        config = scheduler.config
        wrapped = ClassifierGuidance(
            wrapped, gradient, scheduler.alphas_cumprod, config.prediction_type, classifier_scale
        )
    return inpainting(wrapped, keywords.get("known"), keywords.get("known_mask"))
