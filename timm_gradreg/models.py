"""Model creation with the errors a user can act on (unknown name, offline pretrained weights)."""
import difflib
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.models import load_checkpoint

from .activations import DEFAULT_SOURCES, SwapReport, swap_activations
from .checkpoint import read_swap_record, swap_record

__all__ = ['check_model_name', 'create_model', 'load_model_checkpoint', 'load_eval_model', 'ModelError']


class ModelError(ValueError):
    """A model could not be built or loaded; the message says what to do."""


def check_model_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" Close matches: {', '.join(close)}." if close else ' See timm.list_models().'
    raise ModelError(f"Unknown timm model '{name}'.{hint}")


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` that explains a failed pretrained download instead of a hub traceback."""
    check_model_name(name)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:  # hub/network errors come in many types
        raise ModelError(
            f"Could not fetch pretrained weights for '{name}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            'This machine may be offline: drop --pretrained, or pass a local file with --checkpoint / '
            '--initial-checkpoint.') from e


def load_model_checkpoint(
        model: nn.Module,
        path: str,
        use_ema: bool = False,
        strict: bool = True,
        apply_swap: bool = True,
) -> Optional[SwapReport]:
    """Load weights from a timm/timm-gradreg checkpoint, first redoing its recorded activation swap.

    Returns the SwapReport if a swap was applied.
    """
    if not os.path.isfile(path):
        raise ModelError(f"Checkpoint '{path}' does not exist.")
    report = None
    record: Optional[Dict[str, Any]] = read_swap_record(path) if apply_swap else None
    if record:
        report = swap_activations(model, record['act'], record['sources'], check_functional=False)
    try:
        load_checkpoint(model, path, use_ema=use_ema, strict=strict)
    except RuntimeError as e:
        raise ModelError(f"Checkpoint '{path}' does not fit {type(model).__name__}: {str(e).splitlines()[0]} "
                         '(wrong --model or --num-classes?)') from e
    return report


def _namespace_dict(args: Any) -> Dict[str, Any]:
    if args is None:
        return {}
    return dict(vars(args)) if hasattr(args, '__dict__') else dict(args)


def load_eval_model(
        checkpoint: Optional[str] = None,
        model_name: Optional[str] = None,
        *,
        use_ema: bool = False,
        swap: Optional[str] = None,
        swap_source: Optional[Sequence[str]] = None,
        num_classes: Optional[int] = None,
        pretrained: bool = False,
        data_overrides: Optional[Dict[str, Any]] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build a model for evaluation and the data config it was trained with.

    The architecture, class count, model kwargs, activation swap and data settings come
    from the checkpoint when it is a timm-train (or swap-activations) checkpoint; explicit
    arguments win. ``use_ema`` loads the EMA weights (an error if the checkpoint has none).
    Returns (model in eval mode, timm data config).
    """
    saved: Dict[str, Any] = {}
    state_dict = None
    record = None
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise ModelError(f"Checkpoint '{checkpoint}' does not exist.")
        ckpt = torch.load(checkpoint, map_location='cpu', weights_only=False)
        if isinstance(ckpt, dict):
            saved = _namespace_dict(ckpt.get('args'))
            model_name = model_name or ckpt.get('arch') or saved.get('model')
            if use_ema:
                state_dict = ckpt.get('state_dict_ema') or ckpt.get('model_ema')
                if state_dict is None:
                    raise ModelError(f"--use-ema: checkpoint '{checkpoint}' has no EMA weights (state_dict_ema).")
            else:
                state_dict = ckpt.get('state_dict', ckpt.get('model', ckpt))
            record = swap_record(ckpt)
            num_classes = num_classes if num_classes is not None else (saved.get('num_classes') or ckpt.get(
                'num_classes'))
        else:
            state_dict = ckpt
    if not model_name:
        raise ModelError('No model name: give --model (the checkpoint does not record its architecture).')
    kwargs = dict(saved.get('model_kwargs') or {})
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    if saved.get('in_chans'):
        kwargs['in_chans'] = saved['in_chans']
    model = create_model(model_name, pretrained=pretrained, **kwargs)
    if swap:
        swap_activations(model, swap, swap_source or DEFAULT_SOURCES, check_functional=False)
    elif record:
        swap_activations(model, record['act'], record['sources'], check_functional=False)
    if state_dict is not None:
        from timm.models import clean_state_dict
        try:
            model.load_state_dict(clean_state_dict(state_dict))
        except RuntimeError as e:
            raise ModelError(f"Checkpoint '{checkpoint}' does not fit {model_name}: {str(e).splitlines()[0]} "
                             '(wrong --model, --num-classes or --swap-activations?)') from e
    from timm.data import resolve_data_config
    overrides = {k: saved.get(k) for k in ('input_size', 'img_size', 'mean', 'std', 'crop_pct', 'interpolation')
                 if saved.get(k) not in (None, '')}
    overrides.update({k: v for k, v in (data_overrides or {}).items() if v not in (None, '')})
    data_config = resolve_data_config(overrides, model=model)
    return model.eval(), data_config
