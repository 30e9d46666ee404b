"""Model creation with the errors a user can act on (unknown name, offline pretrained weights)."""
import os
import pickle
from typing import Any, Dict, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.models import clean_state_dict, load_checkpoint

from ..utils.registry import close_matches
from .activations import DEFAULT_SOURCES, SwapReport, swap_activations
from .checkpoint import read_swap_record
from .layouts import CheckpointLayoutError, LoadedCheckpoint, model_checkpoint_filter, read_checkpoint

__all__ = ['check_model_name', 'create_model', 'load_model_checkpoint', 'load_eval_model', 'ModelError']


class ModelError(ValueError):
    """A model could not be built or loaded; the message says what to do."""


def check_model_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = close_matches(name, timm.list_models(), n=3)
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

    The architecture, class count, model kwargs, activation swap and data settings come from
    the checkpoint (timm-train, timm, swap-activations, or the paper's official training code:
    ``timm_gradreg.models.layouts``); explicit arguments win. ``use_ema`` loads the EMA weights (an
    error if the checkpoint has none); the official code's checkpoints give their EMA weights
    by default, as the paper evaluates them. Returns (model in eval mode, timm data config).
    """
    loaded = None
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise ModelError(f"Checkpoint '{checkpoint}' does not exist.")
        try:
            loaded = read_checkpoint(torch.load(checkpoint, map_location='cpu', weights_only=False),
                                     use_ema=True if use_ema else None)
        except CheckpointLayoutError as e:
            raise ModelError(f"Checkpoint '{checkpoint}': {e}") from e
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise ModelError(f"Checkpoint '{checkpoint}' is not a readable torch checkpoint "
                             f'({type(e).__name__}: {str(e).splitlines()[0][:200]}).') from e
        model_name = model_name or loaded.model_name
    if not model_name:
        raise ModelError('No model name: give --model (the checkpoint does not record its architecture).')
    kwargs = dict(loaded.model_kwargs) if loaded else {}
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    overrides = dict(loaded.data) if loaded else {}
    overrides.update({k: v for k, v in (data_overrides or {}).items() if v not in (None, '')})
    if overrides.get('input_size') and 'in_chans' not in kwargs:
        kwargs['in_chans'] = overrides['input_size'][0]  # e.g. one channel for Fashion-MNIST
    model = create_model(model_name, pretrained=pretrained, **kwargs)
    record = loaded.swap if loaded else None
    if swap:
        swap_activations(model, swap, swap_source or DEFAULT_SOURCES, check_functional=False)
    elif record:
        swap_activations(model, record['act'], record['sources'], check_functional=False)
    if loaded is not None:
        _load_weights(model, model_name, loaded, checkpoint)
    data_config = resolve_data_config(overrides, model=model)
    return model.eval(), data_config


def _load_weights(model: nn.Module, model_name: str, loaded: LoadedCheckpoint, path: str) -> None:
    """Load a checkpoint's weights, through timm's filter for the model's older layouts when needed."""
    state_dict = clean_state_dict(loaded.state_dict)
    filter_fn = model_checkpoint_filter(model)
    if filter_fn is not None and set(state_dict) != set(model.state_dict()):
        state_dict = filter_fn(state_dict, model)
    missing, unexpected = _key_mismatch(model, state_dict)
    if missing or unexpected:
        raise ModelError(
            f"Checkpoint '{path}' ({loaded.layout} layout, {loaded.weights}) does not fit {model_name}: "
            f'{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]} '
            '(wrong --model, --num-classes or --swap-activations?)')
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise ModelError(f"Checkpoint '{path}' does not fit {model_name}: {str(e).splitlines()[-1].strip()[:300]} "
                         '(wrong --model or --num-classes?)') from e


def _key_mismatch(model: nn.Module, state_dict: Dict[str, Any]):
    expected = set(model.state_dict())
    return sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
