"""The training methods the benchmarks time: task options and the paper's pass counts."""
from dataclasses import dataclass, field
from typing import Any, Dict

__all__ = ['BenchMethod', 'METHODS', 'REFERENCE', 'EAGER_TOO']


@dataclass(frozen=True)
class BenchMethod:
    """A training method as benchmarked: its task options and the paper's pass count."""
    task: str
    passes: float
    options: Dict[str, Any] = field(default_factory=dict)
    compilable: bool = True


#: name -> method; passes count forward and backward passes as in the paper's Table 3 (natural 2, AT 8,
#: GradNorm 5: a double backward counts as about three); a pass on a fraction of the batch or at a reduced
#: resolution counts as that fraction of a pass (the area for a resolution). GradAlign: FGSM 2 + training 2 + one
#: differentiated input gradient 4; CURE: CE 2 + the direction 2 + two differentiated input gradients 8.
METHODS: Dict[str, BenchMethod] = {
    'natural': BenchMethod('natural', 2),
    'gradnorm': BenchMethod('gradnorm', 5, {'impl': 'double_backprop'}, compilable=False),
    'gradnorm-fd': BenchMethod('gradnorm', 4, {'impl': 'fd'}),
    'gradnorm-fd-every2': BenchMethod('gradnorm', 3, {'impl': 'fd', 'every': 2}),
    'edge': BenchMethod('edge', 5, compilable=False),
    'pgd-3': BenchMethod('pgd', 8, {'steps': 3}),
    'fgsm': BenchMethod('fgsm', 4),
    'gradnorm-rho50': BenchMethod('gradnorm', 3.5, {'penalty_fraction': 0.5}, compilable=False),
    'gradnorm-every2': BenchMethod('gradnorm', 3.5, {'every': 2}, compilable=False),
    'gradnorm-every4': BenchMethod('gradnorm', 2.75, {'every': 4}, compilable=False),
    'gradnorm-res50': BenchMethod('gradnorm', 3.25, {'resolution': 0.5}, compilable=False),
    'trades': BenchMethod('trades', 24),
    'igr': BenchMethod('igr', 5, compilable=False),
    'gradalign': BenchMethod('gradalign', 8, compilable=False),
    'cure': BenchMethod('cure', 12, compilable=False),
}
REFERENCE = 'pgd-3'
#: With --torchcompile these are timed eager as well: compiled FD is compared with eager FD and
#: compiled PGD-3, and eager methods (double backprop) with eager PGD-3.
EAGER_TOO = ('gradnorm-fd', REFERENCE)
