"""Per-step training cost of each method (the paper's Table 3), measured side by side.

    python benchmarks/step_cost.py --model resnet50 --act gelu --img-size 128 --batch-size 16
    python benchmarks/step_cost.py --model vit_small_patch16_224 --batch-size 8 --torchcompile

Full training steps (task forward with its regularizer or attack, backward, optimizer
step) of every method are interleaved round by round after a warm-up, so machine noise
hits all methods alike; the order rotates from round to round, so no method always runs after
the same one. On CPU the warm-up goes on (up to --max-warmup rounds) until a round
of steps no longer faults in fresh memory pages: the heap has then grown to each method's
steady-state footprint, as in a long training run, and first-touch page faults (slow on
virtual machines) are not counted as compute. The table gives the median seconds per step,
the ratio to PGD-3 adversarial training (the median of the round-by-round ratios, which cancel
the machine's slow drifts) with their interquartile range (how far the rounds agree), and the
peak memory of a step (CUDA max allocated; on CPU the peak RSS growth of a fresh eager process
running only that method). Models run with BatchNorm in
eval mode unless --train-bn, as in the paper's runs. On CPU, glibc's malloc is told to keep
freed memory (as CUDA's caching allocator does), so a step's time is its compute, not the page
faults of re-mapping activations that the methods' different footprints would cause.

``--passes`` times the first-order passes the methods are made of instead (training forward and
backward, attack forward and input-only backward, eager and compiled) and prints the cost of two
training passes relative to PGD-3's passes: the floor of the finite difference on that machine.
"""
import argparse
import json
import shlex
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the cost package beside this script

from cost.memory import memory_child  # noqa: E402
from cost.methods import METHODS  # noqa: E402
from cost.passes import pass_costs  # noqa: E402
from cost.profile import profile_step  # noqa: E402
from cost.report import format_passes, format_table  # noqa: E402
from cost.table import run_benchmark, run_interleaved  # noqa: E402
from timm_gradreg.models.loading import ModelError  # noqa: E402
from timm_gradreg.tasks import CompileModeError, check_compile_mode  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python benchmarks/step_cost.py', description=__doc__.split('\n\n')[0] + ' Prints a Table-3-like table.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='resnet50', help='timm model (default: resnet50)')
    parser.add_argument('--act', default=None, help='swap ReLU-family activations to this one (e.g. gelu)')
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--img-size', type=int, default=None, help='image size (default: the model\'s)')
    parser.add_argument('--in-chans', type=int, default=3, help='input channels (default: 3)')
    parser.add_argument('-b', '--batch-size', type=int, default=16)
    parser.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    parser.add_argument('--amp', default='none', choices=('none', 'bf16', 'fp16'), help='autocast dtype')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--steps', type=int, default=10, help='timed rounds (default: 10)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first, at least (default: 2)')
    parser.add_argument('--max-warmup', type=int, default=12,
                        help='on CPU, warm up until a round faults in no fresh memory, for at most this many rounds '
                             '(default: 12)')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None,
                        help='torch.compile the methods that can be compiled (not double backprop) with this '
                             'backend (default inductor), and also time gradnorm-fd and pgd eager; ratios are to '
                             'PGD-3 of the same kind (compiled or eager)')
    parser.add_argument('--torchcompile-mode', default=None,
                        help="torch.compile mode with --torchcompile, e.g. max-autotune (default: torch's default)")
    parser.add_argument('--no-fused-attn', action='store_true', help='create the model with fused attention off')
    parser.add_argument('--train-bn', action='store_true', help='BatchNorm in train mode (double backprop is slow)')
    parser.add_argument('--channels-last', action='store_true',
                        help='channels_last memory layout for model and batch, as timm train.py --channels-last')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak memory measurement')
    parser.add_argument('--no-fd-check', action='store_true', help='skip the FD vs double-backprop gradient check')
    parser.add_argument('--output', default='', help='write the results as JSON here')
    parser.add_argument('--profile', default=None, choices=list(METHODS), metavar='METHOD',
                        help='instead of the table, print torch.profiler\'s costliest operators of a step of this '
                             'method (eager, or compiled with --torchcompile) and exit')
    parser.add_argument('--profile-rows', type=int, default=25, help='operators listed by --profile (default: 25)')
    parser.add_argument('--passes', action='store_true',
                        help='instead of the table, time the first-order passes the methods are made of (eager, '
                             'and compiled with --torchcompile) and print the cost of two training passes (the '
                             "finite difference's floor) relative to PGD-3's passes")
    parser.add_argument('--interleave', nargs=2, action='append', default=[], metavar=('NAME', 'ARGS'),
                        help='time another setting in the same rounds: its name and its options as one string (e.g. '
                             '"--model resnet50 --act gelu --img-size 128 -b 16"); the results are keyed by name, '
                             'this command line\'s setting as "main"; memory and the FD check are then skipped')
    parser.add_argument('--memory-child', default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return 0
    if args.passes and args.profile:
        parser.error('--passes and --profile are two different reports: give one of them')
    try:
        check_compile_mode(args.torchcompile_mode, args.torchcompile)
        if args.profile:
            print(profile_step(args))
            return 0
        if args.interleave:
            settings = {'main': args, **{name: parser.parse_args(shlex.split(options) + ['--steps', str(args.steps),
                                                                                   '--warmup', str(args.warmup)])
                                         for name, options in args.interleave}}
            result = {'settings': run_interleaved(settings)}
        else:
            result = pass_costs(args) if args.passes else run_benchmark(args)
    except (ModelError, CompileModeError) as e:
        parser.error(str(e))
    if 'settings' in result:
        print('\n\n'.join(f'[{name}]\n' + format_table(r) for name, r in result['settings'].items()))
    else:
        print(format_passes(result) if args.passes else format_table(result))
    if args.output:
        with open(args.output, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
