"""Per-sample loss-input gradients for double backprop.

Everything a regularizer on ∇ₓ needs, in one place:

* ``per_sample_loss_sum`` turns any timm/torch criterion (mean, sum or no reduction;
  hard labels or Mixup soft targets) into Σ_b loss_b, so ∂/∂x_b of it is sample b's own
  gradient, whatever the batch size.
* ``double_backward_safe`` (from ``double_backward``) makes a forward twice
  differentiable and its double backward cheap (fused attention as its math formulation,
  eval BatchNorm folded into convolutions, patch embeddings as matrix products, compiled
  softmax, LayerNorm and GELU/SiLU input gradients).
* ``scaled_grad`` (and ``input_gradient`` for one tensor) differentiates, with ``create_graph``
  if asked, and under fp16 autocast through a scaled loss that is unscaled afterwards (tiny
  input gradients underflow in fp16 otherwise: the PyTorch AMP gradient-penalty recipe).
"""
import contextlib
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..double_backward import double_backward_safe
from ..utils._private import autocast_dtype

__all__ = [
    'per_sample_loss_sum', 'fp16_autocast_active', 'resolve_loss_scale', 'scaled_grad',
    'input_gradient', 'loss_and_input_gradient', 'at_least_fp32', 'DEFAULT_FP16_INPUT_GRAD_SCALE',
]

#: Scale for fp16 input gradients when no GradScaler is attached (halved on overflow).
DEFAULT_FP16_INPUT_GRAD_SCALE = 2.0 ** 16


def per_sample_loss_sum(criterion: Callable, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ over the batch of per-sample losses, for a criterion of any reduction.

    Batch-mean criteria (timm's LabelSmoothingCrossEntropy, SoftTargetCrossEntropy,
    ``nn.CrossEntropyLoss()``) are multiplied by the batch size; ``reduction='sum'``
    is used as is; ``reduction='none'`` is summed. timm's BinaryCrossEntropy with ``sum_classes`` (``--bce-sum``)
    sums each image's classes and averages over the batch.
    """
    loss = criterion(output, target)
    if loss.ndim > 0:
        return loss.sum()
    reduction = 'mean' if getattr(criterion, 'sum_classes', False) else getattr(criterion, 'reduction', 'mean')
    if reduction == 'sum':
        return loss
    if reduction not in ('mean', 'elementwise_mean'):
        raise ValueError(f'Unsupported criterion reduction {reduction!r}; expected mean, sum or none.')
    return loss * output.shape[0]


def fp16_autocast_active(device_type: str) -> bool:
    """True when autocast to float16 is on for ``device_type`` (bf16 needs no scaling)."""
    return autocast_dtype(device_type) == torch.float16


def _scale_of(grad_scaler: Any) -> float:
    scaler = getattr(grad_scaler, '_scaler', grad_scaler)  # timm NativeScaler wraps torch's GradScaler
    if hasattr(scaler, 'is_enabled') and not scaler.is_enabled():
        return DEFAULT_FP16_INPUT_GRAD_SCALE
    return float(scaler.get_scale())


def resolve_loss_scale(inputs: torch.Tensor, grad_scaler: Any = None) -> Optional[float]:
    """Loss scale for the input gradient: the GradScaler's current scale under fp16, else None."""
    if not fp16_autocast_active(inputs.device.type):
        return None
    if grad_scaler is not None:
        return _scale_of(grad_scaler)
    return DEFAULT_FP16_INPUT_GRAD_SCALE


def scaled_grad(
        loss: torch.Tensor,
        inputs: Sequence[torch.Tensor],
        *,
        create_graph: bool = False,
        grad_scaler: Any = None,
        loss_scale: Optional[float] = None,
        allow_unused: bool = False,
        retain_graph: Optional[bool] = None,
) -> List[Optional[torch.Tensor]]:
    """∂loss/∂inputs, taken of the fp16-scaled loss and unscaled: the one place every regularizer
    takes its gradients.

    The scale is the GradScaler's current one under fp16 autocast (``resolve_loss_scale`` of the
    first input), or ``loss_scale`` when given. Without a GradScaler owning it, an overflow
    lowers the scale (by 2⁸ each time) and the gradients are retaken from the same graph; with
    one, the inf is kept so that the scaler skips the step and lowers its scale as usual. ``retain_graph`` keeps
    the graph for a later backward (torch's default: ``create_graph``).
    """
    scale = resolve_loss_scale(inputs[0], grad_scaler) if loss_scale is None else float(loss_scale)
    if scale is None or scale == 1.0:
        return list(torch.autograd.grad(loss, inputs, create_graph=create_graph, retain_graph=retain_graph,
                                        allow_unused=allow_unused))
    adapt = grad_scaler is None
    while True:
        grads = torch.autograd.grad(loss * scale, inputs, create_graph=create_graph, retain_graph=True,
                                    allow_unused=allow_unused)
        grads = [None if g is None else g / scale for g in grads]
        if not adapt or scale <= 1.0 or all(g is None or bool(torch.isfinite(g).all()) for g in grads):
            return grads
        scale = max(scale / 256.0, 1.0)


def input_gradient(
        loss: torch.Tensor,
        inputs: torch.Tensor,
        *,
        create_graph: bool = True,
        grad_scaler: Any = None,
        loss_scale: Optional[float] = None,
) -> torch.Tensor:
    """∂loss/∂inputs (differentiable with ``create_graph``), fp16-scaled as ``scaled_grad``."""
    (grad,) = scaled_grad(loss, [inputs], create_graph=create_graph, grad_scaler=grad_scaler, loss_scale=loss_scale)
    return grad


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Autocast logits (fp16/bf16) -> fp32 for the loss; fp32/fp64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def loss_and_input_gradient(
        model: nn.Module,
        inputs: torch.Tensor,
        target: torch.Tensor,
        criterion: Callable,
        *,
        create_graph: bool = True,
        grad_scaler: Any = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass; returns (logits, batch-mean loss, per-sample loss-input gradient).

    ``inputs`` are detached and made a leaf; the gradient is w.r.t. them (normalized
    space for timm loaders). With ``create_graph`` the gradient can be penalised and
    the penalty backpropagated to the parameters (double backprop).
    """
    if not torch.is_grad_enabled():
        raise RuntimeError('Input gradients need autograd: call outside torch.no_grad() / torch.inference_mode().')
    x = inputs.detach().requires_grad_(True)
    with double_backward_safe() if create_graph else contextlib.nullcontext():
        output = model(x)
    loss_sum = per_sample_loss_sum(criterion, at_least_fp32(output), target)
    grad = input_gradient(loss_sum, x, create_graph=create_graph, grad_scaler=grad_scaler)
    return output, loss_sum / x.shape[0], grad
