"""gradreg-launch: run an unmodified timm ``train.py`` with a gradreg method in place of its ClassificationTask.

    gradreg-launch train.py --data-dir /imagenet --model resnet50 --gradreg gradnorm --swap-activations gelu ...
    torchrun --nproc_per_node 8 -m timm_gradreg.cli.launch train.py -c args.yaml --gradreg gradnorm ...

The gradreg options (``timm-train --help``'s gradreg groups) come off the command line and out of the ``-c``
YAML; everything else goes to train.py, which ``timm_gradreg.train.launch.GradregTrainScript`` imports and
drives with its own ``main()``.
"""
import sys
from typing import Optional, Sequence

from ..train.launch import GradregTrainScript, LaunchError, gradreg_parser, split_gradreg_args
from .console import command

__all__ = ['main']


@command('gradreg-launch', "train.py wrote no recovery point: continue from its last epoch with --resume "
                           'last.pth.tar')
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.split('\n\n')[0] + '\n\nusage: gradreg-launch TRAIN_PY [train.py options] [gradreg options]\n')
        gradreg_parser().print_help()
        return 0 if argv else 2
    script, rest = argv[0], argv[1:]
    try:
        options, script_argv = split_gradreg_args(rest)
        GradregTrainScript(script, options).run(script_argv)
    except LaunchError as e:
        print(f'gradreg-launch: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
