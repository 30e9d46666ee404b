"""Model creation with the errors a user can act on (unknown name, offline pretrained weights)."""
import difflib
import os
from typing import Any, Dict, Optional

import timm
import torch.nn as nn
from timm.models import load_checkpoint

from .activations import SwapReport, swap_activations
from .checkpoint import read_swap_record

__all__ = ['check_model_name', 'create_model', 'load_model_checkpoint', 'ModelError']


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
