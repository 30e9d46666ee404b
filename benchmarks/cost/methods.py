"""The training methods the benchmarks time: task options and the paper's pass counts."""
from dataclasses import dataclass, field
from typing import Any, Dict

__all__ = ['BenchMethod', 'METHODS', 'REFERENCE', 'EAGER_TOO']


@dataclass(frozen=True)
class BenchMethod:
    """A training method as benchmarked: its task options and the paper's pass count."""
    task: str
    passes: int
    options: Dict[str, Any] = field(default_factory=dict)
    compilable: bool = True


#: name -> method; passes count forward and backward passes as in the paper's Table 3 (natural 2, AT 8).
METHODS: Dict[str, BenchMethod] = {
    'natural': BenchMethod('natural', 2),
    'gradnorm': BenchMethod('gradnorm', 5, {'impl': 'double_backprop'}, compilable=False),
    'gradnorm-fd': BenchMethod('gradnorm', 4, {'impl': 'fd'}),
    'edge': BenchMethod('edge', 5, compilable=False),
    'pgd-3': BenchMethod('pgd', 8, {'steps': 3}),
    'fgsm': BenchMethod('fgsm', 4),
}
REFERENCE = 'pgd-3'
#: With --torchcompile these are timed eager as well: compiled FD is compared with eager FD and
#: compiled PGD-3, and eager methods (double backprop) with eager PGD-3.
EAGER_TOO = ('gradnorm-fd', REFERENCE)
