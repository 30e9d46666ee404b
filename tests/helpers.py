"""Test helpers: tiny real-image folders and timm-train argument lists."""
import glob
import os
from typing import List

import numpy as np
from PIL import Image

from timm_gradreg.recipes import RECIPE_DIR

#: timm's own train.py, unmodified, by revision (Apache-2.0 copies shipped as test fixtures, with timm's license)
STOCK_TRAIN_PY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'timm_train')
STOCK_TRAIN_PY_FILES = {'v1.0.27': os.path.join(STOCK_TRAIN_PY_DIR, 'train-v1.0.27.py'),
                        'main': os.path.join(STOCK_TRAIN_PY_DIR, 'train-main-aa4b5850.py')}


def stock_train_py() -> str:
    """The train.py that goes with the installed timm: v1.0.27's file (tags 1.0.27, 1.0.28) or main's (1.0.29+)."""
    import timm
    from packaging.version import Version
    return STOCK_TRAIN_PY_FILES['main' if Version(timm.__version__) >= Version('1.0.29.dev0') else 'v1.0.27']


def write_image_folder(root, classes: int = 4, train_per_class: int = 6, val_per_class: int = 3,
                       size: int = 32) -> str:
    """A small ImageFolder (train/ and validation/) of real digit scans from scikit-learn."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    root = str(root)
    for c in range(classes):
        images = digits.images[digits.target == c]
        for split, chunk in (('train', images[:train_per_class]),
                             ('validation', images[train_per_class:train_per_class + val_per_class])):
            folder = os.path.join(root, split, str(c))
            os.makedirs(folder, exist_ok=True)
            for i, img in enumerate(chunk):
                pixels = (img / 16 * 255).astype(np.uint8)
                Image.fromarray(pixels, mode='L').resize((size, size), Image.BICUBIC).save(
                    os.path.join(folder, f'{i}.png'))
    return root


def tiny_train_argv(data_dir, output, experiment, *extra, classes: int = 4) -> List[str]:
    """timm-train flags for a seconds-long CPU run of a small smooth timm ResNet."""
    return ['--data-dir', str(data_dir), '--model', 'test_resnet', '--model-kwargs', 'act_layer=gelu',
            '--num-classes', str(classes), '--input-size', '3', '32', '32', '--crop-pct', '1.0', '--no-aug',
            '-b', '8', '--opt', 'adamw', '--lr', '1e-3', '--warmup-epochs', '0', '--workers', '0',
            '--smoothing', '0', '--device', 'cpu', '--bn-eval', '--output', str(output), '--experiment', experiment,
            '--adv-val-steps', '2', '--adv-val-eps', '8/255', '--adv-val-step-size', '4/255', '--log-interval', '1',
            *extra]


def training_recipes() -> List[str]:
    """The shipped timm-train recipes (the gradreg-eval configs among the recipes left out)."""
    recipes = sorted(glob.glob(os.path.join(RECIPE_DIR, '*', '*.yaml')))
    return [r for r in recipes if 'gradreg-eval -c' not in open(r).read()]


def write_fashion_mnist_subset(folder, n_train: int = 64, n_test: int = 32, gz: bool = True) -> str:
    """The first images of Debian's Fashion-MNIST idx files, as four smaller idx files (gzipped or not)."""
    import gzip
    import struct

    import pytest

    from timm_gradreg.data import DEBIAN_FASHION_MNIST
    if not os.path.isdir(DEBIAN_FASHION_MNIST):
        pytest.skip(f'Fashion-MNIST is not installed ({DEBIAN_FASHION_MNIST}): apt-get install dataset-fashion-mnist')
    os.makedirs(folder, exist_ok=True)
    for split, count in (('train', n_train), ('t10k', n_test)):
        for kind, header in (('images-idx3-ubyte', 16), ('labels-idx1-ubyte', 8)):
            with gzip.open(os.path.join(DEBIAN_FASHION_MNIST, f'{split}-{kind}.gz'), 'rb') as f:
                data = f.read()
            item = 28 * 28 if kind.startswith('images') else 1
            head = bytearray(data[:header])
            struct.pack_into('>I', head, 4, count)  # the item count
            out = bytes(head) + data[header:header + count * item]
            path = os.path.join(folder, f'{split}-{kind}' + ('.gz' if gz else ''))
            with (gzip.open(path, 'wb') if gz else open(path, 'wb')) as f:
                f.write(out)
    return str(folder)
