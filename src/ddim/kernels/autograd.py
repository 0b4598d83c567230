"""A backward pass for the fused Triton step, so gradients flow through a CUDA step as through the torch path.

For fixed coefficients the update is linear in x_t, the model output and the noise, except for the
x0 transform (clipping: derivative 1 inside the range, 0 outside; dynamic thresholding: through the
per-row scale as well). The backward pass recomputes the step with the pure-torch update
(:func:`ddim.update.torch_update`, the same numbers) under autograd and propagates the incoming
gradients through it, so every transform gets its exact derivative and the forward pass stays one
kernel launch.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from ddim.coefficients import Folded, UpdateTerms
from ddim.thresholding import X0Transform
from ddim.update import torch_update


class FusedUpdateFunction(torch.autograd.Function):
    """Forward: :func:`ddim.kernels.fused_update`; backward: the torch update's derivative (module doc)."""

    @staticmethod
    def forward(
        ctx: Any,
        sample: torch.Tensor,
        model_output: torch.Tensor,
        noise: torch.Tensor | None,
        coefficients: Folded,
        terms: UpdateTerms,
        transform: X0Transform,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from ddim.kernels import fused_update

        ctx.save_for_backward(sample, model_output, noise)
        ctx.step = (coefficients, terms, transform)
        return fused_update(sample, model_output, coefficients, transform, noise)

    @staticmethod
    def backward(ctx: Any, grad_prev: torch.Tensor | None, grad_x0: torch.Tensor | None) -> tuple[Any, ...]:
        coefficients, terms, transform = ctx.step
        inputs = [
            t.detach().requires_grad_(need) if t is not None else None
            for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[:3], strict=True)
        ]
        sample, model_output, noise = cast(torch.Tensor, inputs[0]), cast(torch.Tensor, inputs[1]), inputs[2]
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        with torch.enable_grad():
            prev, x0 = torch_update(sample, model_output, coefficients, terms, transform, noise)
            pairs = [(out, grad) for out, grad in ((prev, grad_prev), (x0, grad_x0)) if grad is not None]
            grads = iter(
                torch.autograd.grad([out for out, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
            )
        return (*(next(grads) if t is not None and t.requires_grad else None for t in inputs), None, None, None)


def differentiable_fused_update(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: Folded,
    terms: UpdateTerms,
    transform: X0Transform,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prev_sample, x0)`` from the fused kernel, recorded by autograd (see the module doc)."""
    prev, x0 = FusedUpdateFunction.apply(sample, model_output, noise, coefficients, terms, transform)
    return prev, x0
