"""Registry of the embedded demo datasets, addressed as ``--dataset demo/NAME``."""
import os
from typing import Callable, Dict, Optional

from .digits import build_digits_folder

__all__ = ['DEMO_DATASETS', 'default_data_root', 'is_demo_dataset', 'prepare_demo_dataset']

#: name -> builder(root) writing an image folder with train/ and validation/ splits.
DEMO_DATASETS: Dict[str, Callable[[str], str]] = {
    'digits': build_digits_folder,
}


def default_data_root(name: str) -> str:
    """Cache folder for a demo dataset: $TIMM_GRADREG_DATA or ~/.cache/timm_gradreg, then the name."""
    base = os.environ.get('TIMM_GRADREG_DATA') or os.path.join(os.path.expanduser('~'), '.cache', 'timm_gradreg')
    return os.path.join(base, name)


def is_demo_dataset(dataset: str) -> bool:
    return bool(dataset) and dataset.startswith('demo/')


def prepare_demo_dataset(dataset: str, root: Optional[str] = None) -> str:
    """Build (first use) and return the image-folder root of ``demo/NAME``."""
    name = dataset.split('/', 1)[1]
    if name not in DEMO_DATASETS:
        raise ValueError(f"Unknown demo dataset '{dataset}'. Valid: "
                         + ', '.join(f'demo/{n}' for n in sorted(DEMO_DATASETS)))
    return DEMO_DATASETS[name](root or default_data_root(name))
