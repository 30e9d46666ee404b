"""Data: the embedded demo sets (real images built on first use, no download) and standard sets from disk."""
from .demo import DEMO_DATASETS, default_data_root, is_demo_dataset, prepare_demo_dataset
from .digits import build_digits_folder
from .fashion_mnist import (DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES, HOLDOUT_PER_CLASS, holdout_indices,
                            prepare_fashion_mnist, prepare_fashion_mnist_holdout)
from .skipped import name_skipped_files
from .sources import DATA_SOURCES, dataset_num_classes, resolve_dataset
