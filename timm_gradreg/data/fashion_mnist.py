"""Fashion-MNIST from its four standard idx files, wherever they are, in the layout timm reads.

timm names the set ``torch/fashion_mnist`` (torchvision's ``FashionMNIST``: ``ROOT/FashionMNIST/raw/``
with the uncompressed idx files). The files are looked for, in order, in ``--data-dir``, in
``$TIMM_GRADREG_DATA/fashion_mnist`` (or the user cache), and where Debian's ``dataset-fashion-mnist``
puts them; gzipped or not, flat or in torchvision's layout. Gzipped or flat files are unpacked once into
the cache (a folder per source). Without them, timm's own download is used when ``--dataset-download`` allows it.
"""
import gzip
import hashlib
import os
import shutil
from typing import Dict, List, Optional

import numpy as np

from ..utils.files import atomic_write
from .demo import default_data_root

__all__ = ['FASHION_MNIST_FILES', 'DEBIAN_FASHION_MNIST', 'prepare_fashion_mnist', 'prepare_fashion_mnist_holdout',
           'find_idx_files', 'holdout_indices', 'HOLDOUT_PER_CLASS', 'HOLDOUT_SEED']

#: images per class held out of the training set as the validation split of ``fashion_mnist_holdout``
HOLDOUT_PER_CLASS = 1000
HOLDOUT_SEED = 0

FASHION_MNIST_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
                       't10k-labels-idx1-ubyte')
DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'


def _layout(root: str) -> str:
    return os.path.join(root, 'FashionMNIST', 'raw')


def find_idx_files(folder: str) -> Optional[Dict[str, str]]:
    """The four idx files (plain or .gz) in ``folder`` or its torchvision layout, or None if any is missing."""
    found = {}
    for name in FASHION_MNIST_FILES:
        paths = [os.path.join(where, name + ext) for where in (folder, _layout(folder)) for ext in ('', '.gz')]
        path = next((p for p in paths if os.path.isfile(p)), None)
        if path is None:
            return None
        found[name] = path
    return found


def _unpacked_root(files: Dict[str, str]) -> str:
    """A cache folder of its own for each set of source files (path, size and time), so sources never mix."""
    stamp = '|'.join(f'{os.path.abspath(p)}:{os.path.getsize(p)}:{os.path.getmtime(p)}' for p in files.values())
    return os.path.join(default_data_root('fashion_mnist'), 'unpacked', hashlib.sha1(stamp.encode()).hexdigest()[:16])


def _unpack(files: Dict[str, str]) -> str:
    root = _unpacked_root(files)
    raw = _layout(root)
    os.makedirs(raw, exist_ok=True)
    for name, path in files.items():
        target = os.path.join(raw, name)
        if os.path.isfile(target):
            continue
        opener = gzip.open if path.endswith('.gz') else open
        with opener(path, 'rb') as src, atomic_write(target, 'wb') as dst:
            shutil.copyfileobj(src, dst)
    return root


def _places(data_dir: Optional[str]) -> List[str]:
    return [data_dir] if data_dir else [default_data_root('fashion_mnist'), DEBIAN_FASHION_MNIST]


def prepare_fashion_mnist(data_dir: Optional[str] = None, download: bool = False) -> str:
    """The root to give timm's ``torch/fashion_mnist``; unpacks the idx files into the cache when needed."""
    if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ValueError(f"--data-dir '{data_dir}' is a file; give the folder with the Fashion-MNIST idx files.")
    for place in _places(data_dir):
        files = find_idx_files(place)
        if files is None:
            continue
        if all(path == os.path.join(_layout(place), name) for name, path in files.items()):
            return place  # already torchvision's layout, uncompressed
        return _unpack(files)
    if download:
        return data_dir or default_data_root('fashion_mnist')
    where = f"--data-dir '{data_dir}'" if data_dir else f"{default_data_root('fashion_mnist')} or {DEBIAN_FASHION_MNIST}"
    raise ValueError(f'Fashion-MNIST: the four idx files ({", ".join(FASHION_MNIST_FILES)}, .gz or not) are not in '
                     f'{where}. Get them with `apt-get install dataset-fashion-mnist` (Debian), give --data-dir '
                     'with them, or add --dataset-download where a network allows.')


def _read_idx(path: str) -> np.ndarray:
    """An idx file's array (big-endian header: two zero bytes, the type code 0x08 for bytes, the rank, the sizes)."""
    with open(path, 'rb') as f:
        data = f.read()
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(rank))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def _write_idx(path: str, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in array.shape)
    with atomic_write(path, 'wb') as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def holdout_indices(labels: np.ndarray, per_class: int = HOLDOUT_PER_CLASS, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """The training images held out for validation: ``per_class`` of each class, drawn with ``seed``, sorted."""
    rng = np.random.default_rng(seed)
    held = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(held))


def prepare_fashion_mnist_holdout(data_dir: Optional[str] = None, download: bool = False) -> str:
    """Fashion-MNIST with a validation split held out of its training set, for choosing hyperparameters without
    the test set: the root to give timm's ``torch/fashion_mnist``, whose training split is the 50,000 training
    images left and whose evaluation split (``validation`` / ``test``) is the 10,000 held out (1,000 per class,
    seed 0; ``holdout_indices``). Written once into the cache from the standard files (found as
    ``prepare_fashion_mnist`` finds them)."""
    source = prepare_fashion_mnist(data_dir, download)
    files = find_idx_files(source)
    if files is None:  # only where timm is yet to download the set
        raise ValueError('fashion_mnist_holdout is cut from the four Fashion-MNIST idx files, which are not on disk '
                         'yet: run once with --dataset fashion_mnist --dataset-download, then use the holdout.')
    stamp = f'{_unpacked_root(files)}:{HOLDOUT_PER_CLASS}:{HOLDOUT_SEED}'
    root = os.path.join(default_data_root('fashion_mnist'), 'holdout', hashlib.sha1(stamp.encode()).hexdigest()[:16])
    raw = _layout(root)
    if all(os.path.isfile(os.path.join(raw, name)) for name in FASHION_MNIST_FILES):
        return root
    images, labels = _read_idx(files['train-images-idx3-ubyte']), _read_idx(files['train-labels-idx1-ubyte'])
    held = np.zeros(len(labels), dtype=bool)
    held[holdout_indices(labels, HOLDOUT_PER_CLASS, HOLDOUT_SEED)] = True
    os.makedirs(raw, exist_ok=True)
    for prefix, keep in (('train', ~held), ('t10k', held)):  # labels last: their presence marks a complete split
        _write_idx(os.path.join(raw, f'{prefix}-images-idx3-ubyte'), images[keep])
        _write_idx(os.path.join(raw, f'{prefix}-labels-idx1-ubyte'), labels[keep])
    return root
