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

from ..utils.files import atomic_write
from .demo import default_data_root

__all__ = ['FASHION_MNIST_FILES', 'DEBIAN_FASHION_MNIST', 'prepare_fashion_mnist', 'find_idx_files']

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
