"""Embedded demo data: real images built on first use, no download."""
from .demo import DEMO_DATASETS, default_data_root, is_demo_dataset, prepare_demo_dataset
from .digits import build_digits_folder
