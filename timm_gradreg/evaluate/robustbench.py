"""A gradreg-eval result in RobustBench's model-info format (``model_info/DATASET/THREAT/NAME.json``).

RobustBench's entries carry their accuracies as percent strings with two decimals (``"clean_acc": "77.76"``),
ε as a fraction string (``"eps": "4/255"``), and the paper's own fields (link, name, authors, venue), which an
evaluation cannot know and are left for the submitter. The leaderboard's protocol is AutoAttack standard on its
fixed image list (ImageNet: the 5,000 images of ``--subset robustbench``; CIFAR: the first 10,000 test images).
"""
from fractions import Fraction
from typing import Any, Dict, Optional

__all__ = ['robustbench_model_info', 'eps_fraction', 'robustbench_dataset']

#: RobustBench's dataset names, from the names gradreg-eval takes
_DATASETS = (('cifar100', 'cifar100'), ('cifar10', 'cifar10'), ('imagenet', 'imagenet'))


def eps_fraction(eps: float, norm: str = 'Linf') -> str:
    """ε as RobustBench writes it: under L∞ a whole number of 255ths ('4/255'), of 765ths for a third of one
    ('8/765'); the number otherwise ('0.5', and every L2 radius)."""
    if norm != 'Linf':
        return f'{eps:g}'
    scaled = Fraction(eps * 255).limit_denominator(1000)
    if abs(float(scaled) - eps * 255) < 1e-9 and scaled.denominator in (1, 3):
        return f'{scaled.numerator}/{255 * scaled.denominator}'
    return f'{eps:g}'


def robustbench_dataset(dataset: str, subset: str) -> str:
    """RobustBench's name for the evaluated data (the given name where it has none)."""
    if subset in ('official', 'robustbench'):
        return 'imagenet'
    lowered = (dataset or '').lower()
    return next((name for key, name in _DATASETS if key in lowered), dataset or 'imagefolder')


def robustbench_model_info(result: Dict[str, Any], config: Dict[str, Any], architecture: str,
                           forward_passes: int = 1) -> Optional[Dict[str, Any]]:
    """The model-info entry of one model's gradreg-eval ``result`` (None without AutoAttack: RobustBench ranks
    by it); ``config`` is gradreg-eval's options."""
    autoattack = result.get('autoattack')
    if not autoattack:
        return None
    return {
        'link': '', 'name': '', 'authors': '', 'venue': '',  # the paper's, for the submitter to fill
        'additional_data': False,
        'number_forward_passes': forward_passes,
        'dataset': robustbench_dataset(config.get('dataset', ''), config.get('subset', 'seeded')),
        'threat_model': autoattack.get('norm', 'Linf'),
        'architecture': architecture,
        'eps': eps_fraction(autoattack['eps'], autoattack.get('norm', 'Linf')),
        'clean_acc': f"{result['clean_accuracy']:.2f}",
        'reported': f"{autoattack['robust_accuracy']:.2f}",
        'autoattack_acc': f"{autoattack['robust_accuracy']:.2f}",
        'footnote': (f"AutoAttack {autoattack['version']} on {result['num_samples']} images "
                     f"({config.get('subset', 'seeded')} subset) by timm-gradreg's gradreg-eval"),
        'unreliable': False,
    }
