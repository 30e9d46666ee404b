"""gradreg-eval: robustness of timm checkpoints the way the field measures it.

Clean top-1, a PGD sweep over ε (CE and DLR losses, restarts, worst case per sample),
AutoAttack 'standard' at one ε, and the gradient-masking checklist of Carlini et al.;
tables (JSON, CSV, markdown) and the accuracy-vs-ε plot, one line per model.
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Optional

import torch.distributed as dist
import yaml

from ..core.attacks import PGD_STEP_FACTOR, THREAT_MODELS
from ..core.values import attack_count, attack_radius, ball_radius, ball_radius_or_zero, number, pixel_amount
from ..evaluate import DEFAULT_SWEEP_EPS, list_checks
from ..evaluate.interval import format_accuracy
from ..evaluate.report import format_eps
from ..evaluate.pipeline import Evaluator
from ..models.loading import ModelError
from ..recipes import config_path
from ..utils.files import OutputPathError, check_output_path
from ..utils.parser import ArgumentParser
from ..utils.yaml_config import parse_with_config
from .common import add_data_args, add_model_args
from .console import command, setup_console_logging


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog='gradreg-eval',
        description='Evaluate the adversarial robustness of timm models: PGD accuracy-vs-ε sweep, AutoAttack, and '
                    'a gradient-masking checklist. Models take [0, 1] pixels with their normalization inside, in '
                    'eval mode, fp32. Epsilons accept fractions such as 4/255.',
        epilog='Example: gradreg-eval --checkpoint output/demo/digits_*/last.pth.tar --dataset demo/digits '
               '--autoattack --aa-eps 24/255 --sanity --output output/eval')
    parser.add_argument('-c', '--config', default='', metavar='FILE',
                        help='YAML config of these options, a file or a packaged recipe (e.g. '
                             'imagenet/swin_base_natural); flags win, unknown keys are an error')
    parser.add_argument('--dry-run', action='store_true', help='print the resolved options as YAML and exit')
    add_model_args(parser)
    add_data_args(parser)
    parser.add_argument('--no-split-accuracy', action='store_true',
                        help='with --num-samples: skip the clean pass over the whole split that the summary sets '
                             'beside the sample (one forward pass per image: minutes for ImageNet on a CPU)')
    group = parser.add_argument_group('Threat model')
    group.add_argument('--norm', default='Linf', choices=list(THREAT_MODELS),
                       help='the ball the PGD sweep and AutoAttack attack in: L∞ (ε in (0, 1] pixel units, e.g. 4/255) '
                            'or L2 (ε the L2 length in pixel units, e.g. 0.5 on CIFAR, 3 on ImageNet) (default: Linf)')
    group = parser.add_argument_group('PGD sweep')
    group.add_argument('--eps', type=ball_radius_or_zero, nargs='+', default=list(DEFAULT_SWEEP_EPS), metavar='EPS',
                       help='ε values of the curve (default: 0..32/255, 16 points)')
    group.add_argument('--steps', type=attack_count, default=100, help='PGD steps per attack (default: 100)')
    group.add_argument('--restarts', type=attack_count, default=1, help='random restarts per loss (default: 1)')
    group.add_argument('--losses', nargs='+', default=['ce', 'dlr'], choices=('ce', 'dlr', 'margin'),
                       help='attack losses; each one is run, worst case kept (default: ce dlr)')
    group.add_argument('--step-size-factor', type=number(0, low_open=True), default=PGD_STEP_FACTOR,
                       help=f'step = factor·ε/steps (default: {PGD_STEP_FACTOR})')
    group.add_argument('--no-sweep', action='store_true', help='skip the PGD sweep')
    group = parser.add_argument_group('AutoAttack')
    group.add_argument('--autoattack', action='store_true', help="run AutoAttack (needs 'pyautoattack')")
    group.add_argument('--aa-eps', type=ball_radius, nargs='+', default=[4 / 255], metavar='EPS',
                       help='AutoAttack ε, one run per value (default: 4/255)')
    group.add_argument('--aa-version', default='standard', choices=('standard', 'plus', 'rand'),
                       help="AutoAttack version (default: standard)")
    group.add_argument('--aa-batch-size', type=number(1, integer=True), default=None,
                       help='AutoAttack batch size (--batch-size)')
    group = parser.add_argument_group('Gradient-masking checklist')
    group.add_argument('--sanity', action='store_true', help='run the checklist of Carlini et al. (2019)')
    group.add_argument('--sanity-eps', type=attack_radius, default=None, metavar='EPS',
                       help='ε of the checks (default: the largest --aa-eps)')
    group.add_argument('--sanity-samples', type=attack_count, default=200, metavar='N',
                       help='samples for the checks (200)')
    group.add_argument('--sanity-steps', type=attack_count, default=20,
                       help='PGD steps of the checks (20; doubled once)')
    group.add_argument('--sanity-checks', nargs='+', default=None, choices=list_checks(), metavar='NAME',
                       help=f"subset of checks (default: all: {', '.join(list_checks())})")
    group.add_argument('--square-queries', type=attack_count, default=1000,
                       help='Square attack queries for the check')
    group.add_argument('--tolerance', type=number(0, low_open=True), default=1.0,
                       help='accuracy tolerance of the checks, in points, at least 2 samples\' worth (1.0)')
    group.add_argument('--source-checkpoint', default='', metavar='PATH',
                       help='another model whose PGD examples are transferred (transfer check)')
    group.add_argument('--source-model', default=None, metavar='NAME', help='model name of --source-checkpoint')
    return parser


def _print_summary(models: List[Dict[str, Any]]) -> None:
    """Per model: clean, the PGD sweep (ε in /255: accuracy), AutoAttack with its 95% interval, the checklist."""
    print(f"Summary, {models[0]['num_samples']} samples per model (95% Wilson intervals):")
    for m in models:
        n = m['num_samples']
        parts = [f"{m['label']}: clean {format_accuracy(m['clean_accuracy'], n)}"]
        if 'split' in m:
            parts[0] += f" (whole split: {m['split']['clean_accuracy']:.1f}% of {m['split']['num_samples']})"
        if 'sweep' in m:
            norm = m['sweep'].get('norm', 'Linf')  # L∞ ε in 255ths, L2 as its length
            points = ' '.join(f"{e * 255 if norm == 'Linf' else e:g}:{a:.1f}"
                              for e, a in zip(m['sweep']['eps'], m['sweep']['accuracy']))
            parts.append(('PGD ' if norm == 'Linf' else f'PGD ({norm}) ') + points)
        for aa in m.get('autoattack_by_eps') or ([m['autoattack']] if 'autoattack' in m else []):
            norm = aa.get('norm', 'Linf')
            parts.append(f"AutoAttack {'' if norm == 'Linf' else norm + ' '}{format_eps(aa['eps'], norm)} "
                         f"{format_accuracy(aa['robust_accuracy'], n)}")
        if 'sanity' in m:
            parts.append(m['sanity']['verdict'])
        print('  ' + ' | '.join(parts))


@command('gradreg-eval', 'rerun the same command with the same --output to resume (finished PGD sweeps and '
                         "AutoAttack's finished attacks are kept)")
def main(argv: Optional[List[str]] = None) -> int:
    setup_console_logging()
    parser = build_parser()
    args, _ = parse_with_config(parser, argv, locate=config_path)
    if args.dry_run:
        print(yaml.safe_dump(vars(args), sort_keys=False), end='')
        return 0
    if args.norm == 'Linf':  # pixel units: an L∞ radius is at most the pixel range
        for flag, values, check in (('--eps', args.eps, pixel_amount), ('--aa-eps', args.aa_eps, attack_radius)):
            for value in values:
                try:
                    check(f'{value:g}')  # the converter's message names the value as a number is written
                except argparse.ArgumentTypeError as e:
                    parser.error(f'argument {flag}: {e}')
    elif args.sanity:
        parser.error('--sanity checks an L∞ evaluation (its checks compare sign steps, FGSM and L2 directions in the '
                     'L∞ ball): drop it, or evaluate with --norm Linf')
    if not (args.autoattack or args.sanity) and args.no_sweep:
        parser.error('nothing to do: --no-sweep without --autoattack or --sanity')
    if not args.no_sweep and not any(eps > 0 for eps in args.eps):
        parser.error(f"--eps {' '.join(f'{e:g}' for e in args.eps)}: the PGD sweep attacks nothing; give at least one "
                     'ε > 0 (0 is the clean point), or --no-sweep')
    created = bool(args.output) and not os.path.exists(args.output)
    if args.output:
        try:
            check_output_path(args.output)
        except OutputPathError as e:
            print(f'gradreg-eval: error: {e}', file=sys.stderr)
            return 2
        os.makedirs(args.output, exist_ok=True)  # the resumable AutoAttack state goes there as it runs
    evaluator = None
    try:
        evaluator = Evaluator(args)
        results = evaluator.run()
    except (ModelError, ValueError, FileNotFoundError, ImportError) as e:
        if created and not os.listdir(args.output):
            os.rmdir(args.output)
        print(f'gradreg-eval: error: {e}'.replace('\n', ' '), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('gradreg-eval: interrupted' + ('; AutoAttack resumes where it stopped when rerun with the same '
                                             '--output.' if args.autoattack and args.output else '.'), file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    if evaluator.rank == 0:
        _print_summary(results)
        if args.output:
            written = evaluator.write(args.output)
            print(f"Wrote to {os.path.abspath(args.output)}: {', '.join(written)}")
    evaluator.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
