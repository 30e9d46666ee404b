"""Checkpoint layouts the evaluation tools read: what a file holds and how to rebuild its model.

* ``official``: the paper's released models and anything its (ARES-based) training code saves:
  timm's CheckpointSaver dict (``state_dict``, ``state_dict_ema``, ``args`` of that code, with
  keys such as ``lrb``, ``gradnorm``, ``advtrain``, ``replace_relu_with_gelu``). The model is the
  plain timm model (normalization is in the data pipeline) with ReLU swapped for GELU/SiLU where
  ``args`` says so; the code's own Swin registration saves the original Swin layout (downsampling
  at the end of a stage, a ``head`` Linear, persistent ``relative_position_index``/``attn_mask``),
  which timm's Swin checkpoint filter converts. The paper evaluates the EMA weights, and so do we.
* ``timm``: timm's train.py, timm-train and swap-activations checkpoints (``state_dict``,
  optionally ``state_dict_ema``, ``args`` with timm's keys).
* ``state_dict``: a bare parameter-name -> tensor mapping.
"""
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from ..utils.registry import Registry
from .checkpoint import swap_record

__all__ = ['LoadedCheckpoint', 'CheckpointLayoutError', 'read_checkpoint', 'register_layout', 'list_layouts',
           'model_checkpoint_filter']


class CheckpointLayoutError(ValueError):
    """A checkpoint none of the known layouts reads."""


@dataclass
class LoadedCheckpoint:
    """What a checkpoint says about its model: where it came from, how to build it, its weights."""
    layout: str
    state_dict: Dict[str, torch.Tensor]
    model_name: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    swap: Optional[Dict[str, Any]] = None
    data: Dict[str, Any] = field(default_factory=dict)
    weights: str = 'state_dict'


#: Keys only the official training code's args have (adversarial_training*.py).
_OFFICIAL_ARGS = ('lrb', 'gradnorm', 'advtrain', 'contourtrain', 'replace_relu_with_gelu', 'create_model_pretrained')
#: Official model names that are not timm's, and the timm model and kwargs that rebuild them.
_OFFICIAL_MODELS = {'prn18': ('preact_resnet18_cifar', {'act_layer': 'gelu'})}
_DATA_KEYS = ('input_size', 'img_size', 'mean', 'std', 'crop_pct', 'interpolation')


def _args(checkpoint: dict) -> Dict[str, Any]:
    args = checkpoint.get('args')
    if args is None:
        return {}
    return dict(vars(args)) if hasattr(args, '__dict__') else dict(args)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _data(args: Dict[str, Any]) -> Dict[str, Any]:
    data = {k: args[k] for k in _DATA_KEYS if args.get(k) not in (None, '')}
    if isinstance(data.get('input_size'), int):  # the official code's input_size is one number
        data['input_size'] = (3, data['input_size'], data['input_size'])
    return data


def _read_official(checkpoint: dict, use_ema: Optional[bool]) -> LoadedCheckpoint:
    args = _args(checkpoint)
    ema = checkpoint.get('state_dict_ema')
    weights = 'state_dict_ema' if ema is not None and use_ema is not False else 'state_dict'
    name, kwargs = _OFFICIAL_MODELS.get(args.get('model'), (args.get('model'), {}))
    swap = None
    for act in ('gelu', 'silu'):  # the official CIFAR network has its activation built in
        if args.get(f'replace_relu_with_{act}') and args.get('model') not in _OFFICIAL_MODELS:
            swap = {'act': act, 'sources': ['relu']}
    if args.get('num_classes'):
        kwargs = {**kwargs, 'num_classes': args['num_classes']}
    return LoadedCheckpoint('official', checkpoint[weights], name, kwargs, swap, _data(args), weights)


def _read_timm(checkpoint: dict, use_ema: Optional[bool]) -> LoadedCheckpoint:
    args = _args(checkpoint)
    if use_ema:
        weights = next((k for k in ('state_dict_ema', 'model_ema') if checkpoint.get(k) is not None), None)
        if weights is None:
            raise CheckpointLayoutError('--use-ema: the checkpoint has no EMA weights (state_dict_ema).')
    else:
        weights = 'state_dict' if 'state_dict' in checkpoint else 'model'
    kwargs = dict(args.get('model_kwargs') or {})
    num_classes = args.get('num_classes') or checkpoint.get('num_classes')
    if num_classes:
        kwargs['num_classes'] = num_classes
    if args.get('in_chans'):
        kwargs['in_chans'] = args['in_chans']
    return LoadedCheckpoint('timm', checkpoint[weights], checkpoint.get('arch') or args.get('model'), kwargs,
                            swap_record(checkpoint), _data(args), weights)


def _read_state_dict(checkpoint: dict, use_ema: Optional[bool]) -> LoadedCheckpoint:
    if use_ema:
        raise CheckpointLayoutError('--use-ema: a bare state dict has no EMA weights.')
    return LoadedCheckpoint('state_dict', checkpoint)


@dataclass(frozen=True)
class _Layout:
    matches: Callable[[dict], bool]
    read: Callable[[dict, Optional[bool]], LoadedCheckpoint]
    expects: str


_LAYOUTS: Registry[_Layout] = Registry('checkpoint layout', sorted_names=False)


def register_layout(name: str, matches: Callable[[dict], bool], read: Callable[[dict, Optional[bool]],
                    LoadedCheckpoint], expects: str) -> None:
    """Teach the evaluation tools a checkpoint layout; layouts are tried in registration order."""
    _LAYOUTS.register(name, _Layout(matches, read, expects))


def list_layouts() -> List[str]:
    return _LAYOUTS.names()


register_layout('official', lambda c: 'state_dict' in c and any(k in _args(c) for k in _OFFICIAL_ARGS), _read_official,
                "'state_dict' and 'state_dict_ema' with the official code's 'args' (lrb, gradnorm, advtrain, ...)")
register_layout('timm', lambda c: _is_state_dict(c.get('state_dict')) or _is_state_dict(c.get('model')), _read_timm,
                "'state_dict' (or 'model'), optionally 'state_dict_ema' and 'args' (timm, timm-train)")
register_layout('state_dict', _is_state_dict, _read_state_dict, 'parameter names mapped to tensors')


def read_checkpoint(checkpoint: Any, use_ema: Optional[bool] = None) -> LoadedCheckpoint:
    """Read a loaded checkpoint with the first layout that matches it.

    ``use_ema``: True loads the EMA weights (an error without them), False the raw ones, None the
    layout's default (EMA for the official code's checkpoints, raw weights otherwise).
    """
    if isinstance(checkpoint, dict):
        for _, layout in _LAYOUTS.items():
            if layout.matches(checkpoint):
                return layout.read(checkpoint, use_ema)
    found = ', '.join(f"'{k}'" for k in list(checkpoint)[:12]) if isinstance(checkpoint, dict) else \
        type(checkpoint).__name__
    expected = '; '.join(f'{name}: {layout.expects}' for name, layout in _LAYOUTS.items())
    raise CheckpointLayoutError(f'unrecognized checkpoint layout. Expected one of: {expected}. Found: {found}.')


def model_checkpoint_filter(model: nn.Module) -> Optional[Callable[[dict, nn.Module], dict]]:
    """timm's ``checkpoint_filter_fn`` of the module defining ``model`` (old layouts -> current), if it has one."""
    module = importlib.import_module(type(model).__module__)
    fn = getattr(module, 'checkpoint_filter_fn', None)
    return fn if callable(fn) and type(model).__module__.startswith('timm.') else None

