"""The memory a training step needs per GPU, predicted without a GPU.

The run's model and task take one training step on the ``meta`` device (shapes without data: a Swin-B
step with double backprop takes seconds and no memory), at batch 2 and 4. Saved-tensor hooks count the
bytes autograd keeps for backward, each storage once, parameters and buffers excluded: the forward's
activations and, with double backprop, what the first backward keeps for the second. Their growth from
batch 2 to 4 is the activation memory per sample; parameters, gradients, the optimizer's state (from
one step of the run's own optimizer) and the EMA copy are the states. The prediction at the per-GPU
batch is states + TRANSIENT_FACTOR × the saved activations: the backward pass's gradient buffers and
the compiled kernels' own saves come on top of what the hooks count (``benchmarks/memory_scale.py``
measures the ratio on this machine; docs/scale.md).
"""
import argparse
import math
import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.optim import create_optimizer_v2, optimizer_kwargs
from torch.autograd.graph import saved_tensors_hooks

from ..models.modes import freeze_batchnorm
from ..tasks import create_task
from .config import batch_for_global, criterion_kwargs, mixup_active
from .fsdp import fsdp_units
from .model import create_train_model

__all__ = ['MemoryPrediction', 'predict_memory', 'saved_tensor_bytes', 'memory_advice', 'default_gpu_memory', 'GIB',
           'USABLE_SHARE', 'TRANSIENT_FACTOR']

GIB = 2 ** 30
#: The share of a GPU's memory a run can plan on: the CUDA context and the caching allocator's
#: fragmentation take the rest.
USABLE_SHARE = 0.9
#: Peak activation memory per byte the saved-tensor hooks count (an upper bound of the ratios measured
#: by benchmarks/memory_scale.py, docs/scale.md).
TRANSIENT_FACTOR = 1.7


@dataclass(frozen=True)
class MemoryPrediction:
    """Bytes of one training step: activations (fixed part + per sample) and states."""
    activations_per_sample: int
    activations_fixed: int
    parameters: int
    gradients: int
    optimizer_state: int
    ema: int
    dtype: str
    #: ``--fsdp``: the states above are one process's shards; these bytes are the blocks gathered at once
    gathered: int = 0
    shards: int = 1

    @property
    def states(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.ema + self.gathered

    def saved(self, batch_size: int) -> int:
        """Bytes saved for backward at ``batch_size`` (what the hooks count)."""
        return self.activations_fixed + self.activations_per_sample * batch_size

    def activations(self, batch_size: int) -> int:
        """Peak activation bytes at ``batch_size``: the saved bytes and the backward's transients."""
        return round(TRANSIENT_FACTOR * self.saved(batch_size))

    def peak(self, batch_size: int) -> int:
        return self.states + self.activations(batch_size)

    def max_batch(self, budget: float) -> int:
        """The largest per-GPU batch whose predicted peak is within ``budget`` bytes (0: not even one)."""
        room = (budget - self.states) / TRANSIENT_FACTOR - self.activations_fixed
        return max(0, math.floor(room / self.activations_per_sample)) if self.activations_per_sample else 0

    def describe(self, batch_size: int) -> str:
        sharded = (f', sharded over {self.shards} processes with {self.gathered / GIB:.1f} gathered at once'
                   if self.shards > 1 else '')
        return (f'predicted peak per GPU: {self.peak(batch_size) / GIB:.1f} GiB at batch {batch_size} '
                f'(activations {self.activations(batch_size) / GIB:.1f}, states {self.states / GIB:.1f}{sharded}; '
                f'{self.dtype}, {self.activations_per_sample / 2 ** 20:.0f} MiB saved per sample)')


def saved_tensor_bytes(step: Callable[[], None], exclude: Iterable[torch.Tensor] = ()) -> int:
    """The peak bytes autograd holds saved for backward while ``step`` runs.

    Each storage counts once (views and detached tensors share their base's; storages are told apart by
    their implementation's address, which the meta device has too) for as long as a saved tensor on it is
    alive: an attack's passes free theirs before the next. The storages of ``exclude`` (parameters,
    buffers) do not count.
    """
    def key(tensor: torch.Tensor) -> int:
        return tensor.untyped_storage()._cdata

    excluded = {key(t) for t in exclude}
    live: Dict[int, List[int]] = {}  # storage -> [saved tensors alive on it, bytes]
    total, peak = [0], [0]

    def release(storage: int) -> None:
        entry = live.get(storage)
        if entry is None:  # its storage was released already (torch may keep a tensor's Python object)
            return
        entry[0] -= 1
        if entry[0] == 0:
            total[0] -= entry[1]
            del live[storage]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = key(tensor)
        if storage in excluded:
            return tensor
        if storage not in live:
            live[storage] = [0, tensor.untyped_storage().nbytes()]
            total[0] += live[storage][1]
            peak[0] = max(peak[0], total[0])
        live[storage][0] += 1
        weakref.finalize(tensor, release, storage).atexit = False  # counting ends with the process
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return peak[0]


def _state_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def _step_activations(cfg: argparse.Namespace, model: nn.Module, batch_size: int, dtype: torch.dtype) -> int:
    """Saved bytes of one training step of the run's task at ``batch_size`` (meta device)."""
    meta = torch.device('meta')
    data_config = resolve_data_config(vars(cfg), model=model, verbose=False)
    task = create_task(cfg.gradreg, model, criterion_kwargs=criterion_kwargs(cfg), device=meta, dtype=dtype,
                       verbose=False, mean=data_config['mean'], std=data_config['std'], **cfg.task_kwargs)
    task.set_epoch(float(max(cfg.epochs, 1)) - 1.0)  # past every warm-up
    model.train(not cfg.train_in_eval_mode)
    if cfg.bn_eval:
        freeze_batchnorm(model)
    x = torch.empty(batch_size, *data_config['input_size'], device=meta, dtype=dtype)
    num_classes = model.num_classes
    target = (torch.empty(batch_size, num_classes, device=meta, dtype=dtype) if mixup_active(cfg)
              else torch.empty(batch_size, dtype=torch.long, device=meta))
    return saved_tensor_bytes(lambda: task(x, target), exclude=[*model.parameters(), *model.buffers()])


def _optimizer_state_bytes(cfg: argparse.Namespace, model: nn.Module) -> int:
    """The state the run's optimizer keeps, after one step on the meta device."""
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=cfg), **cfg.opt_kwargs)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.empty_like(p)
    optimizer.step()
    return _state_bytes(v for state in optimizer.state.values() for v in state.values())


def _native_norms(model: nn.Module) -> None:
    """timm's norm layers switched from their fast kernels to the native ones for the meta-device step (a fast
    norm queries autocast for the tensor's device, which meta has none of); the bytes saved are the same."""
    for module in model.modules():
        if getattr(module, '_fast_norm', False):  # timm's norm layers keep the flag they were built with
            module._fast_norm = False


def predict_memory(cfg: argparse.Namespace, dtype: Optional[torch.dtype] = None) -> MemoryPrediction:
    """The memory of one training step of the resolved configuration ``cfg`` (see the module docstring).

    ``dtype`` defaults to float32, or with ``--amp`` to its dtype: a model cast to it, a lower bound of
    autocast's activations (autocast keeps norms and softmax in float32).
    """
    if dtype is None:
        dtype = (torch.bfloat16 if cfg.amp_dtype == 'bfloat16' else torch.float16) if cfg.amp else torch.float32
    with torch.device('meta'):
        model = create_train_model(cfg, pretrained=False, load_checkpoint=False)
    model.to(dtype)
    _native_norms(model)
    with warnings.catch_warnings():  # the task's advice (e.g. on ReLU) is for training, not for this count
        warnings.simplefilter('ignore')
        two, four = (_step_activations(cfg, model, b, dtype) for b in (2, 4))  # BatchNorm needs 2
    per_sample = max((four - two) // 2, 0)
    model.float()  # the parameters, gradients and optimizer state stay float32 under AMP
    trainable = [p for p in model.parameters() if p.requires_grad]
    ema = _state_bytes([*model.parameters(), *model.buffers()]) if cfg.model_ema and not cfg.model_ema_force_cpu else 0
    prediction = MemoryPrediction(activations_per_sample=per_sample, activations_fixed=max(two - 2 * per_sample, 0),
                                  parameters=_state_bytes(model.parameters()), gradients=_state_bytes(trainable),
                                  optimizer_state=_optimizer_state_bytes(cfg, model), ema=ema,
                                  dtype=str(dtype).replace('torch.', ''))
    return _sharded(prediction, model, cfg.world_size) if getattr(cfg, 'fsdp', False) else prediction


def _sharded(prediction: MemoryPrediction, model: nn.Module, shards: int) -> MemoryPrediction:
    """``--fsdp``: parameters, gradients and optimizer state split over ``shards`` processes; gathered at once are
    the parameters and unsharded gradients of the root's own parameters (kept through the step) and of two
    blocks (the one running and the one prefetched)."""
    units = fsdp_units(model)
    in_units = {id(p) for unit in units for p in unit.parameters()}
    root = _state_bytes(p for p in model.parameters() if id(p) not in in_units)
    block = max((_state_bytes(unit.parameters()) for unit in units), default=0)
    split = lambda n: -(-n // shards)  # noqa: E731 (ceil)
    return replace(prediction, parameters=split(prediction.parameters),
                   gradients=split(prediction.gradients), optimizer_state=split(prediction.optimizer_state),
                   gathered=2 * (root + 2 * block) if shards > 1 else 0, shards=shards)


def default_gpu_memory() -> Optional[float]:
    """This machine's GPU memory in GiB (the current CUDA device), None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB


def memory_advice(cfg: argparse.Namespace, prediction: MemoryPrediction, gpu_memory_gib: float) -> str:
    """Whether the run fits in ``gpu_memory_gib`` per GPU (USABLE_SHARE of it), and if not, the per-GPU
    batch and ``--grad-accum-steps`` that keep its global batch (the reproduced run's, where the recipe names it)."""
    budget = gpu_memory_gib * GIB * USABLE_SHARE
    fits = prediction.max_batch(budget)
    where = f'{gpu_memory_gib:g} GiB per GPU ({USABLE_SHARE:.0%} usable)'
    if cfg.batch_size <= fits:
        return f'fits in {where}: up to batch {fits} per GPU'
    if fits < 1:
        return (f'does not fit in {where} even at batch 1 ({prediction.peak(1) / GIB:.1f} GiB): use GPUs with more '
                'memory, --grad-checkpointing, or AMP')
    target = getattr(cfg, 'paper_global_batch', None) or cfg.global_batch_size
    batch, accum = batch_for_global(target, cfg.world_size, fits, max_accum=64)
    reached = batch * cfg.world_size * accum
    keeps = (f'keeps the global batch {target}' if reached == target
             else f'gives the global batch {reached}, the closest to {target} (timm scales the lr)')
    return (f'does not fit in {where} at batch {cfg.batch_size} (at most {fits}): --batch-size {batch} '
            f'--grad-accum-steps {accum} {keeps} on {cfg.world_size} GPUs (predicted peak '
            f'{prediction.peak(batch) / GIB:.1f} GiB)')
