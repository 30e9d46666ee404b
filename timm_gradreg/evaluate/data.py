"""Evaluation data in [0, 1] pixel space: a fixed, reproducible subset of a timm dataset.

Attacks and analyses take pixels (normalization lives inside the model, see
``normalized_model``), so the timm eval transform is built with mean 0 / std 1.
The subset is a seeded permutation of the split (``seeded``), or the fixed list of 5,000 ImageNet validation
images that the paper's evaluation and RobustBench's ImageNet leaderboard both use (``official`` or
``robustbench``: the official code's src_data/val.txt is RobustBench's helper_files/imagenet_test_image_ids.txt,
file for file in the same order; shipped as ``imagenet_val_official.txt``); the same on every machine and for
every model, split across ranks when distributed.
"""
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from timm.data import create_dataset, create_transform
from torch.utils.data import DataLoader, Subset

from ..data import name_skipped_files, resolve_dataset

__all__ = ['subset_indices', 'official_imagenet_indices', 'select_indices', 'SUBSETS', 'OFFICIAL_VAL_LIST',
           'create_pixel_dataset', 'create_pixel_loader', 'load_batches']

#: The official repository's evaluation list (src_data/val.txt): ``class_folder/file label`` per line.
OFFICIAL_VAL_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet_val_official.txt')


def subset_indices(total: int, num_samples: Optional[int], seed: int = 0) -> List[int]:
    """``num_samples`` indices of a seeded permutation of ``range(total)``, in increasing order (all if None)."""
    if num_samples is None or num_samples >= total:
        return list(range(total))
    if num_samples <= 0:
        raise ValueError(f'--num-samples must be > 0, got {num_samples}')
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=generator)[:num_samples].tolist())


def _read_official_list() -> List[Tuple[str, int]]:
    with open(OFFICIAL_VAL_LIST, encoding='utf-8') as f:
        return [(name, int(label)) for name, label in (line.split() for line in f if line.strip())]


def official_imagenet_indices(dataset) -> List[int]:
    """Indices of the official 5,000-image list in an ImageNet validation image folder.

    Files are matched by ``class_folder/file`` (the list's form), or by file name alone for a flat
    folder. A folder that lacks some of them is refused, naming how many and one example.
    """
    samples = getattr(getattr(dataset, 'reader', None), 'samples', None)
    if samples is None:
        raise ValueError('--subset official needs an ImageNet validation image folder (--data-dir with class '
                         'folders), not a named dataset')
    by_path = {}
    for index, (path, _) in enumerate(samples):
        parts = os.path.normpath(path).split(os.sep)
        by_path['/'.join(parts[-2:])] = index
        by_path.setdefault(parts[-1], index)
    wanted = _read_official_list()
    found = [by_path.get(name, by_path.get(name.rsplit('/', 1)[-1])) for name, _ in wanted]
    missing = [name for (name, _), index in zip(wanted, found) if index is None]
    if missing:
        raise ValueError(f'--subset official: {len(missing)} of the {len(wanted)} images of the official list are '
                         f"not in the data folder (e.g. '{missing[0]}'); it needs ImageNet's validation split")
    return sorted(found)


def _seeded(dataset, num_samples: Optional[int], seed: int) -> List[int]:
    return subset_indices(len(dataset), num_samples, seed)


def _official(dataset, num_samples: Optional[int], seed: int) -> List[int]:
    indices = official_imagenet_indices(dataset)
    return indices if num_samples is None else indices[:num_samples]


#: How the evaluated images are chosen: a seeded sample of the split, or the fixed ImageNet list of the official
#: code, which is RobustBench's (two names for one list)
SUBSETS: Dict[str, Callable[..., List[int]]] = {'seeded': _seeded, 'official': _official, 'robustbench': _official}


def select_indices(dataset, subset: str, num_samples: Optional[int], seed: int = 0) -> List[int]:
    """The evaluated indices of ``dataset`` by the rule ``subset`` (see ``SUBSETS``)."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown --subset {subset!r}; valid: {', '.join(SUBSETS)}")
    return SUBSETS[subset](dataset, num_samples, seed)


def create_pixel_dataset(dataset: str, data_dir: Optional[str], split: str, data_config: dict):
    """A timm dataset whose transform is the eval transform of ``data_config`` without normalization."""
    name, root = resolve_dataset(dataset, data_dir)
    channels = data_config['input_size'][0]
    input_mode = 'RGB' if channels == 3 else 'L'
    if not name and not root:
        raise ValueError('No data: give --data-dir (an image folder with the split) or --dataset demo/digits.')
    if not name and not os.path.exists(root):
        raise ValueError(f"--data-dir '{root}' does not exist.")
    try:
        ds = create_dataset(name, root=root, split=split, is_training=False, input_img_mode=input_mode)
    except RuntimeError as e:  # e.g. timm's "Found 0 images in subfolders of ..."
        raise ValueError(f"no usable data in --data-dir '{root}' (split '{split}'): {e}".replace('\n', ' ')) from None
    ds.transform = create_transform(
        data_config['input_size'], is_training=False, interpolation=data_config['interpolation'],
        mean=(0.0,) * channels, std=(1.0,) * channels, crop_pct=data_config['crop_pct'],
        crop_mode=data_config.get('crop_mode', 'center'))
    return name_skipped_files(ds)


def create_pixel_loader(
        dataset,
        indices: Sequence[int],
        batch_size: int,
        workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
) -> Tuple[DataLoader, List[int]]:
    """Loader over this rank's share (every ``world_size``-th) of ``indices``; returns (loader, its indices)."""
    mine = list(indices)[rank::world_size]
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=workers)
    return loader, mine


def load_batches(loader, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """All of a (small) loader in memory: (pixels [N, C, H, W], labels [N])."""
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError('the evaluation subset is empty')
    return torch.cat(xs).to(device), torch.cat(ys).to(device)
