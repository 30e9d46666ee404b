"""scikit-learn's bundled handwritten digits as a timm image folder.

1797 real 8×8 grayscale scans (UCI optical digits), 10 classes, upscaled and split
into ``train/`` and ``validation/`` class folders that timm's ImageFolder reads.
The folder is built once, atomically (safe when several ranks start together).
"""
import json
import logging
import os
import shutil
import tempfile

import numpy as np

__all__ = ['build_digits_folder', 'DIGITS_VERSION']

DIGITS_VERSION = 1

_logger = logging.getLogger(__name__)


def _stratified_split(targets: np.ndarray, val_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    val = np.zeros(len(targets), dtype=bool)
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        val[idx[:int(round(len(idx) * val_fraction))]] = True
    return val


def build_digits_folder(root: str, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> str:
    """Write the digits as PNG class folders under ``root`` (idempotent); returns ``root``."""
    meta = {'dataset': 'digits', 'version': DIGITS_VERSION, 'image_size': image_size,
            'val_fraction': val_fraction, 'seed': seed}
    meta_path = os.path.join(root, 'dataset.json')
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            if json.load(f) == meta:
                return root
        raise ValueError(f"'{root}' holds a different digits build ({meta_path}); remove it or choose "
                         '--data-dir elsewhere.')
    if os.path.isdir(root) and os.listdir(root):
        raise ValueError(f"--data-dir '{root}' holds other files, not the digits demo: with --dataset demo/digits "
                         "it is the folder the demo is built in. Give a new folder, or train on the images there "
                         "as an image folder with --dataset ''.")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError('The digits demo needs scikit-learn: pip install "timm-gradreg[demo]"') from e
    from PIL import Image

    _logger.info(f"Building the digits demo data (first use, a few seconds) in '{root}' ...")
    digits = load_digits()
    is_val = _stratified_split(digits.target, val_fraction, seed)
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.digits-', dir=parent)
    try:
        for i, (image, label) in enumerate(zip(digits.images, digits.target)):
            split = 'validation' if is_val[i] else 'train'
            folder = os.path.join(tmp, split, str(label))
            os.makedirs(folder, exist_ok=True)
            pixels = (image / 16.0 * 255.0).round().astype(np.uint8)
            Image.fromarray(pixels, mode='L').resize((image_size, image_size), Image.BICUBIC).save(
                os.path.join(folder, f'{i:04d}.png'))
        with open(os.path.join(tmp, 'dataset.json'), 'w') as f:
            json.dump(meta, f)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first
            if not os.path.isfile(meta_path):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root
