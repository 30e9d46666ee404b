"""Shared base of the gradreg training tasks."""
import abc
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.task import ClassificationTask
from torch.nn.parallel import DistributedDataParallel

from ..core.input_grad import loss_and_input_gradient
from ..core.normalization import PixelSpace, Stats
from ..utils._private import TASK_TAKES_CRITERION_KWARGS, classification_criterion
from ._registry import task_info
from .checks import TaskSetupError, check_compile_mode, check_task_setup

__all__ = ['GradRegTask']


class GradRegTask(ClassificationTask, abc.ABC):
    """A timm ``ClassificationTask`` that knows pixel space and the training position.

    Subclasses implement ``compute(input, target) -> dict`` returning at least
    ``loss`` and ``output``, plus detached components for logging (``ce``,
    ``penalty``, ``weight`` ...). The trainer (or your loop) calls
    ``set_epoch(epoch + step / steps_per_epoch)`` before each step so schedules are
    updated per iteration; the position is saved in the checkpoint's task state.

    Args:
        model: Model to train; it sees the loader's normalized inputs.
        criterion: Training loss (timm default when None).
        mean: Normalization mean of the data pipeline (pixel <-> normalized).
        std: Normalization std of the data pipeline.
        criterion_kwargs, device, dtype, verbose: As for timm's ClassificationTask.
    """

    task_name = ''
    #: Whether the loss depends on set_epoch() (a warm-up or growing weight); set per instance.
    uses_schedule = False
    #: timm loss types (``--loss``) the task trains with; None: any.
    loss_types: Optional[Tuple[str, ...]] = None
    #: Why other loss types do not apply (shown in errors).
    loss_types_reason = ''

    def __init__(
            self,
            model: nn.Module,
            criterion: Optional[Any] = None,
            *,
            mean: Stats = IMAGENET_DEFAULT_MEAN,
            std: Stats = IMAGENET_DEFAULT_STD,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        if TASK_TAKES_CRITERION_KWARGS:
            super().__init__(model, criterion, criterion_kwargs=criterion_kwargs, device=device, dtype=dtype,
                             verbose=verbose)
        else:  # timm 1.0.27-1.0.30: the task takes a ready criterion
            if criterion is not None and criterion_kwargs:
                raise ValueError(f'Pass either an explicit criterion or criterion_kwargs, not both: '
                                 f'{sorted(criterion_kwargs)}')
            criterion = criterion if criterion is not None else classification_criterion(**(criterion_kwargs or {}))
            super().__init__(model, criterion, device=device, dtype=dtype, verbose=verbose)
        self.space = PixelSpace(mean, std)
        self.epoch = 0.0
        self._epoch_set = False
        self.grad_scaler = None

    # --- training position -------------------------------------------------------------
    def set_epoch(self, epoch: float) -> None:
        """Training position in (fractional) epochs, e.g. ``epoch + batch_idx / len(loader)``."""
        self.epoch = float(epoch)
        self._epoch_set = True

    @property
    def step_cycle(self) -> int:
        """Training steps after which the task's pattern of step kinds repeats (1: every step alike); a
        step's cost is the mean over one cycle."""
        return 1

    def _check_schedule(self) -> None:
        if self.uses_schedule and not self._epoch_set and self.training:
            warnings.warn(
                f'{type(self).__name__}: set_epoch() was never called, so its schedules stay at epoch 0 '
                '(a warm-up weight stays 0). Call task.set_epoch(epoch + step / steps_per_epoch) each step.',
                stacklevel=5)
            self._epoch_set = True  # warn once

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        return {'task': self.task_name, 'epoch': self.epoch}

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        if state and not ema and 'epoch' in state:
            self.set_epoch(state['epoch'])

    # --- AMP ---------------------------------------------------------------------------
    def attach_grad_scaler(self, grad_scaler: Any) -> None:
        """Share the fp16 GradScaler (torch's, or timm's NativeScaler) used for the loss.

        Input gradients are then taken of the loss scaled by its current scale, so an
        overflow makes the scaler skip the step and lower the scale as usual.
        """
        self.grad_scaler = grad_scaler

    # --- models ------------------------------------------------------------------------
    def attack_model(self) -> nn.Module:
        """The trainable module without DDP, for passes that need no gradient all-reduce."""
        module = self.trainable_module
        return module.module if isinstance(module, DistributedDataParallel) else module

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'GradRegTask':
        """Wrap the trainable module in DDP; CPU processes (gloo) pass no device ids, which DDP takes only for
        accelerator modules (timm's train.py passes ``[device]`` whatever the device is)."""
        if device_ids and all(torch.device(d).type == 'cpu' for d in device_ids):
            device_ids = None
        return super().prepare_distributed(device_ids=device_ids, **ddp_kwargs)

    def setup_kwargs(self) -> Dict[str, Any]:
        """The options of this task that its registry entry's capabilities depend on (``first_order_kwargs``)."""
        keys = task_info(self.task_name).first_order_kwargs or {}
        return {k: getattr(self, k) for k in keys if hasattr(self, k)}

    @property
    def needs_double_backprop(self) -> bool:
        """Whether this task, with its options, differentiates an input gradient (no torch.compile)."""
        return task_info(self.task_name).needs_double_backprop(self.setup_kwargs())

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs):
        check_compile_mode(mode, backend)
        try:
            check_task_setup(self.task_name, self.setup_kwargs(), compile=backend)
        except TaskSetupError as e:
            raise RuntimeError(str(e)) from None
        return super().compile(backend=backend, mode=mode, **compile_kwargs)

    def pixel_loss_gradient(self, input: torch.Tensor, target: torch.Tensor, create_graph: bool = True,
                            module: Optional[nn.Module] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, batch-mean loss, per-sample ∇ₓ loss w.r.t. [0, 1] pixels) of ``input`` (normalized).

        The gradient of Σ_b loss_b, so each row is its own sample's, taken through the normalization
        (∂/∂pixel = ∂/∂normalized / std); differentiable with ``create_graph`` (double backprop).
        """
        output, loss, grad = loss_and_input_gradient(module or self.trainable_module, input, target, self.criterion,
                                                     create_graph=create_graph, grad_scaler=self.grad_scaler)
        return output, loss, grad / self.space.std_tensor(grad)

    # --- forward -----------------------------------------------------------------------
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        self._check_schedule()
        return self.compute(input, target)

    @abc.abstractmethod
    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The method's loss on a batch: {'loss', 'output', components...}."""

    def extra_repr(self) -> str:
        return f'epoch={self.epoch:.3f}, {self.space}'
