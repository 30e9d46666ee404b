"""Eval BatchNorm and convolutions with a cheap double backward.

* eval-mode BatchNorm's native double backward is several times slower than that of the
  per-channel affine map it computes; after a convolution the map is folded into the
  convolution's weights (``conv(x, W·s) + t``), so neither backward pass touches the
  activations for it;
* a convolution's double backward takes the weight gradient of the differentiated input
  gradient as a convolution dilated by the stride, a slow path for strided convolutions;
  written as a transposed convolution, it uses the native weight-gradient kernel instead;
* a patch embedding (kernel = stride, no padding: ViT, Swin) maps each patch on its own, so
  its input gradient is one matrix product and a reshuffle of the patches, whose derivative
  is two more; on CPU the native input gradient of a 16×16 stride-16 kernel, and the transposed
  convolution's backward, take several times as long.
"""
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from ..utils._private import autocast_dtype
from .common import bind_args, gradient_needed, record_inputs

__all__ = ['affine_batch_norm', 'batch_norm_scale_shift', 'conv2d_fast_double_backward', 'eval_batch_norm',
           'fast_conv2d']


def batch_norm_scale_shift(running_mean: torch.Tensor, running_var: torch.Tensor, weight: Optional[torch.Tensor],
                           bias: Optional[torch.Tensor], eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with eval batch norm(x) = x·scale + shift."""
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def affine_batch_norm(input: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                      weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                      eps: float = 1e-5) -> torch.Tensor:
    """Eval-mode batch norm as ``input·scale + shift`` (per channel): an elementwise double backward."""
    return _scale_and_shift(input, *batch_norm_scale_shift(running_mean, running_var, weight, bias, eps))


def _scale_and_shift(input: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (input.ndim - 2)
    return torch.addcmul(shift.view(shape), input, scale.view(shape))


def _output_padding(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, conv: tuple) -> Tuple[int, int]:
    """The output_padding that makes conv_transpose2d of ``grad_out`` the size of ``x`` (strided convs)."""
    stride, padding, dilation, _ = conv
    return tuple(
        x.shape[2 + i] - ((grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                          + dilation[i] * (weight.shape[2 + i] - 1) + 1)
        for i in range(2))


def _is_patch_embedding(x: torch.Tensor, weight: torch.Tensor, conv: tuple) -> bool:
    """Non-overlapping patches that tile ``x`` exactly: kernel = stride > 1, no padding, dilation or groups."""
    stride, padding, dilation, groups = conv
    kernel = tuple(weight.shape[2:])
    return (kernel == tuple(stride) and kernel != (1, 1) and tuple(padding) == (0, 0)
            and tuple(dilation) == (1, 1) and groups == 1
            and x.shape[2] % kernel[0] == 0 and x.shape[3] % kernel[1] == 0)


def _patch_embedding_input_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Input gradient of a patch embedding: each output position's gradient times the weight, put back
    as its patch. ``grad_out`` [B, O, H', W'], ``weight`` [O, C, kh, kw] -> [B, C, H'·kh, W'·kw]."""
    batch, out_channels, rows, cols = grad_out.shape
    _, channels, kh, kw = weight.shape
    per_position = grad_out.permute(0, 2, 3, 1).reshape(-1, out_channels)  # a view for timm's (B, N, O) tokens
    patches = torch.mm(per_position, weight.reshape(out_channels, -1))
    patches = patches.view(batch, rows, cols, channels, kh, kw).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, channels, rows * kh, cols * kw)


def _differentiable_input_grad(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                               conv: tuple) -> torch.Tensor:
    """The convolution's input gradient as ops with fast derivatives (see the module docstring)."""
    if _is_patch_embedding(x, weight, conv):
        return _patch_embedding_input_grad(grad_out, weight)
    stride, padding, dilation, groups = conv
    return F.conv_transpose2d(grad_out, weight, None, stride, padding, _output_padding(x, weight, grad_out, conv),
                              groups, dilation)


class _Conv2dFastDoubleBackward(torch.autograd.Function):
    """``F.conv2d`` whose backward, when itself differentiated, is a transposed convolution.

    The first backward is the native one, except that under ``create_graph`` the input
    gradient is ``conv_transpose2d(grad_out, weight)`` (for patch embeddings a matrix product,
    in every backward); differentiating that again uses the native kernels (a forward
    convolution and a weight gradient) instead of ``_convolution_double_backward``'s
    stride-dilated convolution. Gradients that the running backward does not need (the
    weights during ``autograd.grad(loss, x)``) are not computed.
    """

    @staticmethod
    def setup(ctx, x, weight, bias, conv: tuple) -> None:
        record_inputs(ctx, x, weight, bias)
        ctx.save_for_backward(x, weight, bias)
        ctx.conv = conv
        ctx.has_bias = bias is not None

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        _Conv2dFastDoubleBackward.setup(ctx, x, weight, bias, (stride, padding, dilation, groups))
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, _ = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need_x, need_w = gradient_needed(ctx, 0), gradient_needed(ctx, 1)
        need_b = ctx.has_bias and gradient_needed(ctx, 2)
        grad_x = grad_w = grad_b = None
        if need_x and (torch.is_grad_enabled() or _is_patch_embedding(x, weight, ctx.conv)):
            # create_graph: the input gradient will be differentiated; patch embeddings: a matrix
            # product is several times faster than the native kernel either way
            grad_x = _differentiable_input_grad(grad_out, x, weight, ctx.conv)
            need_x = False
        if need_x or need_w:
            native_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(stride), list(padding), list(dilation), False, [0, 0], groups,
                [need_x, need_w, False])
            grad_x = native_x if need_x else grad_x
        if need_b:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


class _ConvBatchNorm(torch.autograd.Function):
    """Eval BatchNorm folded into the convolution it follows: ``conv(x, W·s) + t``.

    The value is computed from the convolution's output (``conv_out·s + t``, no second
    convolution); the derivatives are those of a convolution with the folded weight ``W·s``
    and bias ``b·s + t``, which carry the gradients on to W, b, γ and β.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, conv_out, scale, shift):
        _Conv2dFastDoubleBackward.setup(ctx, x, weight, bias, (stride, padding, dilation, groups))
        return torch.addcmul(shift.view(1, -1, 1, 1), conv_out, scale.view(1, -1, 1, 1))

    @staticmethod
    def backward(ctx, grad_out):
        return _Conv2dFastDoubleBackward.backward(ctx, grad_out) + (None, None, None)


#: Attribute under which a convolution's output keeps what folding a BatchNorm into it needs.
_CONV_RECORD = '_gradreg_conv_record'


def _record_conv(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 conv: tuple) -> torch.Tensor:
    """Attach (its autograd node, x, weight, bias, conv) to a convolution's output, for ``_fold_into_conv``."""
    setattr(out, _CONV_RECORD, (out.grad_fn, x, weight, bias, conv))
    return out


def _fold_into_conv(conv_out: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> Optional[torch.Tensor]:
    """``conv_out·scale + shift`` folded into the convolution that made ``conv_out``; None if none did
    (or ``conv_out`` was modified since: its autograd node is no longer the convolution's)."""
    record = getattr(conv_out, _CONV_RECORD, None)
    if record is None or record[0] is not conv_out.grad_fn or conv_out.grad_fn is None:
        return None
    _, x, weight, bias, conv = record
    if not (x.dtype == weight.dtype == scale.dtype == conv_out.dtype):  # autocast: keep the plain affine map
        return None
    folded_weight = weight * scale.view(-1, 1, 1, 1)
    folded_bias = shift if bias is None else torch.addcmul(shift, bias, scale)
    out = _ConvBatchNorm.apply(x, folded_weight, folded_bias, *conv, conv_out.detach(), scale.detach(),
                               shift.detach())
    return _record_conv(out, x, folded_weight, folded_bias, conv)


def _pair(value: Any) -> Tuple[int, int]:
    return tuple(value) * (2 // len(value)) if isinstance(value, (tuple, list)) else (int(value), int(value))


def conv2d_fast_double_backward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                                stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` (integer padding, 4-D input) with a fast double backward; see the module docstring."""
    dtype = autocast_dtype(x.device.type)
    if dtype is not None:  # run in the autocast dtype, as F.conv2d would
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    conv = (_pair(stride), _pair(padding), _pair(dilation), groups)
    return _record_conv(_Conv2dFastDoubleBackward.apply(x, weight, bias, *conv), x, weight, bias, conv)


_BATCH_NORM_ARGS = ('input', 'running_mean', 'running_var', 'weight', 'bias', 'training', 'momentum', 'eps')
_BATCH_NORM_DEFAULTS = {'weight': None, 'bias': None, 'training': False, 'momentum': 0.1, 'eps': 1e-5}
_CONV_ARGS = ('input', 'weight', 'bias', 'stride', 'padding', 'dilation', 'groups')
_CONV_DEFAULTS = {'bias': None, 'stride': 1, 'padding': 0, 'dilation': 1, 'groups': 1}


def eval_batch_norm(func: Callable, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """Eval ``F.batch_norm`` as an affine map, folded into the convolution before it; None in train mode."""
    bn = bind_args(_BATCH_NORM_ARGS, _BATCH_NORM_DEFAULTS, args, kwargs)
    if bn['training'] or bn['running_mean'] is None or bn['running_var'] is None:
        return None
    scale, shift = batch_norm_scale_shift(bn['running_mean'], bn['running_var'], bn['weight'], bn['bias'], bn['eps'])
    folded = _fold_into_conv(bn['input'], scale, shift)
    return folded if folded is not None else _scale_and_shift(bn['input'], scale, shift)


def fast_conv2d(func: Callable, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """``F.conv2d`` with the transposed-convolution double backward; None for string padding."""
    conv = bind_args(_CONV_ARGS, _CONV_DEFAULTS, args, kwargs)
    if conv['input'].ndim != 4 or isinstance(conv['padding'], str):
        return None
    return conv2d_fast_double_backward(conv['input'], conv['weight'], conv['bias'], conv['stride'], conv['padding'],
                                       conv['dilation'], conv['groups'])
