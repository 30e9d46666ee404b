"""Where a ``--dataset`` name's files come from: the embedded demo sets and standard sets found on disk."""
from typing import Callable, Dict, Optional, Tuple

from .demo import is_demo_dataset, prepare_demo_dataset
from .fashion_mnist import prepare_fashion_mnist

__all__ = ['DATA_SOURCES', 'resolve_dataset']

#: dataset name -> (timm's dataset name, prepare(data_dir, download) -> the root to give timm)
DATA_SOURCES: Dict[str, Tuple[str, Callable[[Optional[str], bool], str]]] = {
    'fashion_mnist': ('torch/fashion_mnist', prepare_fashion_mnist),
    'torch/fashion_mnist': ('torch/fashion_mnist', prepare_fashion_mnist),
}


def resolve_dataset(dataset: str, data_dir: Optional[str], download: bool = False) -> Tuple[str, Optional[str]]:
    """(timm dataset name, root) for ``dataset``: a demo set is built into an image folder (name ''), a
    standard set is found on disk (ValueError naming the ways to get it if it is not); others pass through."""
    if is_demo_dataset(dataset):
        return '', prepare_demo_dataset(dataset, data_dir)
    if dataset in DATA_SOURCES:
        name, prepare = DATA_SOURCES[dataset]
        return name, prepare(data_dir, download)
    return dataset, data_dir
