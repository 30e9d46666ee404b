"""Where a ``--dataset`` name's files come from: the embedded demo sets and standard sets found on disk."""
from typing import Any, Callable, Dict, Optional, Tuple

from .demo import is_demo_dataset, prepare_demo_dataset
from .fashion_mnist import prepare_fashion_mnist, prepare_fashion_mnist_holdout

__all__ = ['DATA_SOURCES', 'resolve_dataset', 'dataset_num_classes']

#: dataset name -> (timm's dataset name, prepare(data_dir, download) -> the root to give timm)
DATA_SOURCES: Dict[str, Tuple[str, Callable[[Optional[str], bool], str]]] = {
    'fashion_mnist': ('torch/fashion_mnist', prepare_fashion_mnist),
    'torch/fashion_mnist': ('torch/fashion_mnist', prepare_fashion_mnist),
    'fashion_mnist_holdout': ('torch/fashion_mnist', prepare_fashion_mnist_holdout),  # validation held out of train
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


def dataset_num_classes(dataset: Any) -> Optional[int]:
    """The number of classes of a timm or torchvision dataset (its folders or its ``classes``), None if it
    does not say."""
    reader = getattr(dataset, 'reader', None)
    mapping = getattr(reader, 'class_to_idx', None) or getattr(dataset, 'class_to_idx', None)
    if mapping:
        return len(mapping)
    classes = getattr(dataset, 'classes', None)
    return len(classes) if classes is not None else None
