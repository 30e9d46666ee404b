"""The training methods of the benchmarks: task options, the paper's pass counts, and how the frontier
trains each (its base recipe and further timm-train flags)."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from timm_gradreg.tasks import task_options

__all__ = ['BenchMethod', 'METHODS', 'REFERENCE', 'EAGER_TOO']


@dataclass(frozen=True)
class BenchMethod:
    """A training method as benchmarked: its task options, the paper's pass count, and on the frontier
    the base recipe (natural, gradnorm or advtrain of the benchmark) with further timm-train flags
    ({eps}, {igr} filled per benchmark); ``recipe`` None keeps it off the frontier."""
    task: str
    passes: float
    options: Dict[str, Any] = field(default_factory=dict)
    compilable: bool = True
    recipe: Optional[str] = None
    train_flags: Tuple[str, ...] = ()

    def timm_train_flags(self) -> List[str]:
        """``--gradreg`` and the task options as timm-train flags (the task registry's), then ``train_flags``."""
        by_kwarg = {option.kwarg: option.flag for option in task_options(self.task)}
        flags = ['--gradreg', self.task]
        for kwarg, value in self.options.items():
            if isinstance(value, bool):  # a switch: --x / --no-x
                flags.append(by_kwarg[kwarg] if value else '--no-' + by_kwarg[kwarg][2:])
            else:
                flags += [by_kwarg[kwarg], str(value)]
        return flags + list(self.train_flags)


#: name -> method; passes count forward and backward passes as in the paper's Table 3 (natural 2, AT 8,
#: GradNorm 5: a double backward counts as about three); a pass on a fraction of the batch or at a reduced
#: resolution counts as that fraction of a pass (the area for a resolution). GradAlign: FGSM 2 + training 2 + one
#: differentiated input gradient 4; CURE: CE 2 + the direction 2 + two differentiated input gradients 8; ELLE: FGSM 2 +
#: training 2 + the triplets' forward and backward on three batches 6; PGD-2 (APGD, 2 steps): 2 input gradients 4 +
#: the last iterate scored 1 + training 2.
METHODS: Dict[str, BenchMethod] = {
    'natural': BenchMethod('natural', 2, recipe='natural'),
    'gradnorm': BenchMethod('gradnorm', 5, {'impl': 'double_backprop'}, compilable=False, recipe='gradnorm'),
    'gradnorm-fd': BenchMethod('gradnorm', 4, {'impl': 'fd'}, recipe='gradnorm'),
    'gradnorm-fd-every2': BenchMethod('gradnorm', 3, {'impl': 'fd', 'every': 2}, recipe='gradnorm'),
    'edge': BenchMethod('edge', 5, compilable=False),
    'pgd': BenchMethod('pgd', 8, {'steps': 3}, recipe='advtrain'),
    'fgsm': BenchMethod('fgsm', 4, recipe='advtrain'),
    'nfgsm': BenchMethod('nfgsm', 4, recipe='advtrain', train_flags=('--nfgsm-eps', '{eps}')),
    'pgd2': BenchMethod('pgd', 7, {'steps': 2, 'algorithm': 'apgd', 'random_start': False}, recipe='natural',
                        train_flags=('--attack-eps', '{eps}', '--attack-warmup-epochs', '2')),
    'elle': BenchMethod('elle', 10, {'weight': 4000.0, 'adaptive': True}, recipe='advtrain',
                        train_flags=('--elle-eps', '{eps}')),
    'gradnorm-rho50': BenchMethod('gradnorm', 3.5, {'penalty_fraction': 0.5}, compilable=False, recipe='gradnorm'),
    'gradnorm-every2': BenchMethod('gradnorm', 3.5, {'every': 2}, compilable=False, recipe='gradnorm'),
    'gradnorm-every4': BenchMethod('gradnorm', 2.75, {'every': 4}, compilable=False, recipe='gradnorm'),
    'gradnorm-res50': BenchMethod('gradnorm', 3.25, {'resolution': 0.5}, compilable=False, recipe='gradnorm'),
    'trades': BenchMethod('trades', 24, recipe='natural', train_flags=('--trades-eps', '{eps}')),
    'igr': BenchMethod('igr', 5, compilable=False, recipe='natural', train_flags=('--igr-weight', '{igr}')),
    'gradalign': BenchMethod('gradalign', 8, compilable=False, recipe='natural',
                             train_flags=('--gradalign-eps', '{eps}', '--gradalign-warmup-epochs', '5')),
    'cure': BenchMethod('cure', 12, compilable=False, recipe='natural'),
}
REFERENCE = 'pgd'
#: With --torchcompile these are timed eager as well: compiled FD is compared with eager FD and
#: compiled PGD-3, and eager methods (double backprop) with eager PGD-3.
EAGER_TOO = ('gradnorm-fd', REFERENCE)
