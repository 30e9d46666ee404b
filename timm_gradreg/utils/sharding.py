"""Whether a module is sharded by PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``)."""
import torch.nn as nn

try:  # torch >= 2.6 exports FSDP2 publicly
    from torch.distributed.fsdp import FSDPModule, fully_shard
except ImportError:  # older torch: no FSDP2 for timm-train
    FSDPModule, fully_shard = None, None

__all__ = ['FSDPModule', 'fully_shard', 'is_sharded']


def is_sharded(module: nn.Module) -> bool:
    """True for a module that ``fully_shard`` made an FSDP module (its parameters are DTensor shards)."""
    return FSDPModule is not None and isinstance(module, FSDPModule)
