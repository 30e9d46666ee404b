"""Progress bars (tqdm when installed, as it is with timm's hub dependency) that can be switched off."""
from typing import Iterable, Optional

__all__ = ['progress']


def progress(iterable: Iterable, desc: str = '', enabled: bool = True, total: Optional[int] = None) -> Iterable:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
