"""Every private torch and timm API the package uses, each behind a guard with a public fallback.

The fallbacks compute the same values (more slowly, or without an optimization), so a release
that renames or drops one of these still trains correctly. The aten operators called directly
(``torch.ops.aten.convolution_backward``, ``gelu_backward``, ``silu_backward``,
``native_layer_norm_backward``) are the public operator registry, not listed here.
"""
import contextlib
import logging
from typing import Any, ContextManager, List, Optional

import torch

#: The oldest timm with the task API the package drives (trainable_module, setup_ema, resume_task_checkpoint).
MIN_TIMM = (1, 0, 27)

__all__ = ['require_timm', 'MIN_TIMM', 'engine_will_execute', 'autocast_enabled', 'autocast_dtype', 'foreach_mul_', 'compile_mode_names', 'recompile_limit', 'torch_function_disabled',
           'softmax_backward', 'timm_activation_names', 'evaluation_sample_limit', 'TASK_TAKES_CRITERION_KWARGS',
           'classification_criterion', 'quiet_cuda_home_notice']

#: The modes ``torch.compile(mode=...)`` documents; used where torch cannot list its own.
_DOCUMENTED_COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def engine_will_execute(node: Any) -> bool:
    """Whether the running backward will execute autograd ``node`` (True when torch cannot tell).

    Lets a custom Function skip gradients the caller did not ask for (the weights while
    ``autograd.grad`` takes an input gradient).
    """
    query = getattr(torch._C, '_will_engine_execute_node', None)
    if query is None:
        return True
    try:
        return bool(query(node))
    except RuntimeError:  # called outside a backward pass
        return True


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``; False for device types without autocast (``meta``)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):
        return False


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype for ``device_type`` when autocast is on there, else None."""
    return torch.get_autocast_dtype(device_type) if autocast_enabled(device_type) else None


def foreach_mul_(tensors: List[torch.Tensor], factor: Any) -> None:
    """In-place ``t *= factor`` for each tensor, as one multi-tensor kernel where torch has it."""
    kernel = getattr(torch, '_foreach_mul_', None)
    if kernel is not None:
        kernel(tensors, factor)
        return
    for t in tensors:
        t.mul_(factor)


def compile_mode_names() -> List[str]:
    """The mode names ``torch.compile`` accepts."""
    try:
        from torch._inductor import list_mode_options
        return list(list_mode_options())
    except (ImportError, AttributeError):
        return list(_DOCUMENTED_COMPILE_MODES)


def recompile_limit(limit: int) -> ContextManager:
    """Let a compiled function keep up to ``limit`` graphs (one per input shape)."""
    config = getattr(getattr(torch, '_dynamo', None), 'config', None)
    for name in ('recompile_limit', 'cache_size_limit'):  # renamed in torch 2.6
        if config is not None and hasattr(config, name):
            return config.patch(**{name: limit})
    return contextlib.nullcontext()


def torch_function_disabled() -> ContextManager:
    """Run without ``__torch_function__`` modes (a compiled kernel must not be traced through them)."""
    disable = getattr(torch._C, 'DisableTorchFunction', None)
    return disable() if disable is not None else contextlib.nullcontext()


def softmax_backward(grad_out: torch.Tensor, probs: torch.Tensor, dim: int) -> torch.Tensor:
    """Input gradient of softmax from its output: ``probs·(grad_out − Σ grad_out·probs)`` along ``dim``."""
    kernel = getattr(torch, '_softmax_backward_data', None)
    if kernel is not None:
        return kernel(grad_out, probs, dim, probs.dtype)
    return probs * (grad_out - (grad_out * probs).sum(dim, keepdim=True))



def timm_activation_names() -> List[str]:
    """The activation names timm's ``get_act_layer`` / ``create_act_layer`` know."""
    try:
        from timm.layers.create_act import _ACT_LAYER_DEFAULT
        return sorted(_ACT_LAYER_DEFAULT)
    except ImportError:  # names are still validated by get_act_layer; only the listing is lost
        return []


def evaluation_sample_limit(loader) -> Optional[int]:
    """Real samples of this process in a loader, without the distributed sampler's padding (timm >= 1.0.31
    samplers know it); None when unknown or unpadded."""
    try:
        from timm.task import evaluation_sample_limit as limit
    except ImportError:
        return getattr(getattr(loader, 'sampler', None), 'num_valid_samples', None)
    return limit(loader)


def _task_takes_criterion_kwargs() -> bool:
    import inspect

    from timm.task import ClassificationTask
    return 'criterion_kwargs' in inspect.signature(ClassificationTask.__init__).parameters


#: timm >= 1.0.31's ClassificationTask builds its criterion from ``criterion_kwargs``; 1.0.27-1.0.30 take a criterion.
TASK_TAKES_CRITERION_KWARGS = _task_takes_criterion_kwargs()


def classification_criterion(loss_type: Optional[str] = None, smoothing: float = 0.0, soft_targets: bool = False,
                             bce_target_thresh: Optional[float] = None, **unused: Any) -> Any:
    """The training criterion timm's train.py builds, for timm versions whose task takes no criterion_kwargs
    (timm >= 1.0.31 builds it itself with ``create_classification_loss``)."""
    try:
        from timm.loss import create_classification_loss
    except ImportError:
        from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        if loss_type == 'bce':
            return BinaryCrossEntropy(smoothing=0.0 if soft_targets else smoothing, target_threshold=bce_target_thresh)
        if soft_targets:
            return SoftTargetCrossEntropy()
        if smoothing:
            return LabelSmoothingCrossEntropy(smoothing=smoothing)
        return torch.nn.CrossEntropyLoss()
    return create_classification_loss(loss_type=loss_type, smoothing=smoothing, soft_targets=soft_targets,
                                      bce_target_thresh=bce_target_thresh, **unused)


def require_timm() -> None:
    """Refuse, with the fix, a timm older than ``MIN_TIMM`` (its task API lacks what the tasks and trainer use)."""
    import timm
    found = tuple(int(p) for p in timm.__version__.split('+')[0].split('.')[:3] if p.isdigit())
    if found < MIN_TIMM:
        need = '.'.join(map(str, MIN_TIMM))
        raise ImportError(f"timm-gradreg needs timm >= {need}, found timm {timm.__version__} at "
                          f"{timm.__file__}: pip install -U 'timm>={need}'")


class _NoCudaRuntimeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith('No CUDA runtime is found')


def quiet_cuda_home_notice() -> None:
    """Drop torch's "No CUDA runtime is found, using CUDA_HOME=..." warning.

    torch.compile imports torch.utils.cpp_extension, which prints it on any CPU-only run of a machine
    with a CUDA toolkit installed; it concerns building CUDA extensions, which the kernels here never do.
    """
    logger = logging.getLogger('torch.utils.cpp_extension')
    if not any(isinstance(f, _NoCudaRuntimeNotice) for f in logger.filters):
        logger.addFilter(_NoCudaRuntimeNotice())
