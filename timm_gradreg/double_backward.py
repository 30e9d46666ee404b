"""Forward passes that can be differentiated twice, cheaply.

Double backprop (GradNorm, edge alignment, Hessian-vector products) differentiates the
backward pass of the network. Four of PyTorch's defaults make that fail or slow:

* fused ``scaled_dot_product_attention`` kernels (flash / memory-efficient, CPU and
  CUDA) have no double backward; the math kernel does;
* eval-mode BatchNorm's native double backward is several times slower than that of
  the per-channel affine map it computes; after a convolution the map is folded into
  the convolution's weights (``conv(x, W·s) + t``), so neither backward pass touches
  the activations for it;
* a convolution's double backward takes the weight gradient of the differentiated
  input gradient as a convolution dilated by the stride, a slow path for strided
  convolutions; written as a transposed convolution, it uses the native
  weight-gradient kernel instead;
* the double backward of a smooth activation (exact GELU, SiLU) is a chain of some ten
  elementwise kernels per layer; its input gradient is instead one ``torch.compile``d
  kernel, whose derivative AOTAutograd compiles into one more (eager if compiling fails,
  or with ``TORCHDYNAMO_DISABLE=1``).

``double_backward_safe()`` applies all four to the forward passes run inside it. The
functions computed, and their first and second derivatives, are unchanged.
"""
import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ['double_backward_safe', 'affine_batch_norm', 'batch_norm_scale_shift', 'conv2d_fast_double_backward',
           'SMOOTH_ACTIVATIONS', 'FusedPointwise']


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


def _will_run(ctx: Any, index: int) -> bool:
    """Whether the backward in progress needs the gradient of input ``index`` (``autograd.grad`` inputs)."""
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.next_functions[index][0]
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # no such query in this torch: compute it
        return True


def _output_padding(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, conv: tuple) -> Tuple[int, int]:
    """The output_padding that makes conv_transpose2d of ``grad_out`` the size of ``x`` (strided convs)."""
    stride, padding, dilation, _ = conv
    return tuple(
        x.shape[2 + i] - ((grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                          + dilation[i] * (weight.shape[2 + i] - 1) + 1)
        for i in range(2))


class _Conv2dFastDoubleBackward(torch.autograd.Function):
    """``F.conv2d`` whose backward, when itself differentiated, is a transposed convolution.

    The first backward is the native one, except that under ``create_graph`` the input
    gradient is ``conv_transpose2d(grad_out, weight)``; differentiating that again uses
    the native kernels (a forward convolution and a weight gradient) instead of
    ``_convolution_double_backward``'s stride-dilated convolution. Gradients that the
    running backward does not need (the weights during ``autograd.grad(loss, x)``) are
    not computed.
    """

    @staticmethod
    def setup(ctx, x, weight, bias, conv: tuple) -> None:
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
        need_x, need_w = _will_run(ctx, 0), _will_run(ctx, 1)
        need_b = ctx.has_bias and _will_run(ctx, 2)
        grad_x = grad_w = grad_b = None
        if torch.is_grad_enabled() and need_x:  # create_graph: the input gradient will be differentiated
            grad_x = F.conv_transpose2d(grad_out, weight, None, stride, padding,
                                        _output_padding(x, weight, grad_out, ctx.conv), groups, dilation)
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


_FOLDABLE_NODES = (_Conv2dFastDoubleBackward._backward_cls, _ConvBatchNorm._backward_cls)


def _fold_into_conv(conv_out: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> Optional[torch.Tensor]:
    """``conv_out·scale + shift`` folded into the convolution that made ``conv_out``; None if none did."""
    node = conv_out.grad_fn
    if type(node) not in _FOLDABLE_NODES or conv_out.ndim != 4:
        return None
    x, weight, bias = node.saved_tensors
    if not (x.dtype == weight.dtype == scale.dtype == conv_out.dtype):  # autocast: keep the plain affine map
        return None
    folded_weight = weight * scale.view(-1, 1, 1, 1)
    folded_bias = shift if bias is None else torch.addcmul(shift, bias, scale)
    return _ConvBatchNorm.apply(x, folded_weight, folded_bias, *node.conv, conv_out.detach(), scale.detach(),
                                shift.detach())


def _pair(value: Any) -> Tuple[int, int]:
    return tuple(value) * (2 // len(value)) if isinstance(value, (tuple, list)) else (int(value), int(value))


def conv2d_fast_double_backward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                                stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` (integer padding, 4-D input) with a fast double backward; see the module docstring."""
    if torch.is_autocast_enabled(x.device.type):  # run in the autocast dtype, as F.conv2d would
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    return _Conv2dFastDoubleBackward.apply(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups)


def _gelu_input_grad(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """gelu'(x)·grad_out for the exact GELU x·Φ(x): (Φ(x) + x·φ(x))·grad_out."""
    cdf = 0.5 * (1.0 + torch.erf(x * math.sqrt(0.5)))
    pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return grad_out * (cdf + x * pdf)


def _silu_input_grad(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """silu'(x)·grad_out for x·σ(x): σ(x)·(1 + x·(1 − σ(x)))·grad_out."""
    sig = torch.sigmoid(x)
    return grad_out * (sig * (1.0 + x * (1.0 - sig)))


class FusedPointwise:
    """An elementwise function of same-shaped tensors run as one ``torch.compile``d kernel.

    Inputs are flattened and their length marked dynamic, so one graph serves every layer
    (on CPU and CUDA; ``dynamic=True`` fails to compile on CUDA in torch 2.11). Called on tensors
    that require grad, AOTAutograd compiles the derivative too. If compiling fails (no C++
    compiler for CPU kernels, an unsupported platform) it warns once and stays eager.
    """

    def __init__(self, fn: Callable[..., torch.Tensor]):
        self.fn = fn
        self._compiled: Optional[Callable[..., torch.Tensor]] = None
        self._failed = False

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        if not self._failed:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self.fn)
                flat = [t.reshape(-1) for t in tensors]
                for t in flat:
                    torch._dynamo.maybe_mark_dynamic(t, 0)
                with torch._C.DisableTorchFunction():  # not traced through double_backward_safe's mode
                    return self._compiled(*flat).view(tensors[0].shape)
            except Exception as e:  # compile errors vary by backend; the eager result is identical
                self._failed = True
                warnings.warn(f'{self.fn.__name__}: torch.compile failed ({type(e).__name__}: {e}); '
                              'running it as eager kernels.', stacklevel=2)
        return self.fn(*tensors)


@dataclass(frozen=True)
class _SmoothActivation:
    """An activation's native first-order backward, its fused input gradient, and the keyword
    arguments (with the values) under which it is that function."""
    native_backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    input_grad: FusedPointwise
    plain_kwargs: Dict[str, Any]


#: Smooth activations (what the paper trains) whose double backward is fused.
SMOOTH_ACTIVATIONS: Dict[Callable, _SmoothActivation] = {
    F.gelu: _SmoothActivation(torch.ops.aten.gelu_backward, FusedPointwise(_gelu_input_grad), {'approximate': 'none'}),
    F.silu: _SmoothActivation(torch.ops.aten.silu_backward, FusedPointwise(_silu_input_grad), {'inplace': False}),
}


class _FusedActivation(torch.autograd.Function):
    """An activation whose backward under ``create_graph`` is its fused input-gradient kernel."""

    @staticmethod
    def forward(ctx, x, func, activation):
        ctx.save_for_backward(x)
        ctx.activation = activation
        return func(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: this gradient will be differentiated
            return ctx.activation.input_grad(grad_out, x), None, None
        return ctx.activation.native_backward(grad_out, x), None, None


def _fused_activation(func: Callable, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """``func(*args, **kwargs)`` with a fused double backward, or None where the native one is needed."""
    activation = SMOOTH_ACTIVATIONS[func]
    x = args[0] if len(args) == 1 else None
    if (x is None or any(activation.plain_kwargs.get(k, object()) != v for k, v in kwargs.items())
            or not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.requires_grad)
            or not torch.is_grad_enabled()):
        return None  # tanh GELU, in-place SiLU, positional options, no graph: native path
    return _FusedActivation.apply(x, func, activation)


def _bind(names: Sequence[str], defaults: Dict[str, Any], args: tuple, kwargs: dict) -> Dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


_BATCH_NORM_ARGS = ('input', 'running_mean', 'running_var', 'weight', 'bias', 'training', 'momentum', 'eps')
_BATCH_NORM_DEFAULTS = {'weight': None, 'bias': None, 'training': False, 'momentum': 0.1, 'eps': 1e-5}
_CONV_ARGS = ('input', 'weight', 'bias', 'stride', 'padding', 'dilation', 'groups')
_CONV_DEFAULTS = {'bias': None, 'stride': 1, 'padding': 0, 'dilation': 1, 'groups': 1}


class _CheapDoubleBackward(TorchFunctionMode):
    """Routes eval-mode ``F.batch_norm``, ``F.conv2d`` and smooth activations to versions with a
    cheap double backward."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SMOOTH_ACTIVATIONS:
            fused = _fused_activation(func, args, kwargs)
            if fused is not None:
                return fused
        if func is F.batch_norm:
            bn = _bind(_BATCH_NORM_ARGS, _BATCH_NORM_DEFAULTS, args, kwargs)
            if not bn['training'] and bn['running_mean'] is not None and bn['running_var'] is not None:
                scale, shift = batch_norm_scale_shift(bn['running_mean'], bn['running_var'], bn['weight'],
                                                      bn['bias'], bn['eps'])
                folded = _fold_into_conv(bn['input'], scale, shift)
                return folded if folded is not None else _scale_and_shift(bn['input'], scale, shift)
        elif func is F.conv2d:
            conv = _bind(_CONV_ARGS, _CONV_DEFAULTS, args, kwargs)
            if conv['input'].ndim == 4 and not isinstance(conv['padding'], str) and torch.is_grad_enabled():
                return conv2d_fast_double_backward(
                    conv['input'], conv['weight'], conv['bias'], conv['stride'], conv['padding'], conv['dilation'],
                    conv['groups'])
        return func(*args, **kwargs)


@contextlib.contextmanager
def double_backward_safe() -> Iterator[None]:
    """Context in which forward passes can be differentiated twice, and cheaply (module docstring)."""
    with contextlib.ExitStack() as stack:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        except ImportError:  # torch < 2.3 has no SDPA backend selection
            pass
        stack.enter_context(_CheapDoubleBackward())
        yield
