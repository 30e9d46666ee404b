"""swap-activations: turn a timm model's ReLUs into a smooth activation, check it, and save it (``--output``)
for fine-tuning."""
import argparse
import os
import sys
from typing import List, Optional

import torch

from ..models.activations import DEFAULT_SOURCES, SOURCE_ACTIVATIONS, list_target_activations, swap_activations
from ..models.checkpoint import SWAP_KEY, atomic_save
from ..models.loading import ModelError, create_model, load_model_checkpoint
from ..utils.parser import ArgumentParser
from .console import command, setup_console_logging


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog='swap-activations',
        description='Replace the ReLU-family activation modules of a timm model with a smooth activation '
                    '(GradNorm needs one), check a forward pass, and save a checkpoint that records the swap '
                    'so timm-train can fine-tune from it (--initial-checkpoint).',
        epilog='Example: swap-activations resnet50 gelu --checkpoint resnet50_relu.pth.tar --output r50_gelu.pth.tar')
    parser.add_argument('model', metavar='MODEL', help='timm model name, e.g. resnet50')
    parser.add_argument('act', metavar='ACT', help=f"new activation: {', '.join(list_target_activations())}, "
                                                   "softplus, or any timm get_act_layer name")
    parser.add_argument('--source', nargs='+', default=list(DEFAULT_SOURCES), metavar='KIND',
                        help=f"activation kinds to replace (default: {' '.join(DEFAULT_SOURCES)}; "
                             f"valid: {', '.join(SOURCE_ACTIVATIONS)})")
    parser.add_argument('--leaky', action='store_true', help='also replace LeakyReLU')
    parser.add_argument('--checkpoint', default='', metavar='PATH', help='local weights to load before the swap')
    parser.add_argument('--use-ema', action='store_true', help='load the EMA weights of --checkpoint')
    parser.add_argument('--pretrained', action='store_true',
                        help='start from timm pretrained weights (needs network access to the HF hub)')
    parser.add_argument('--num-classes', type=int, default=None, metavar='N', help='classifier size (model default)')
    parser.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                        help="input size for the forward check (model's pretrained_cfg default)")
    parser.add_argument('--output', default='', metavar='PATH',
                        help='where to write the swapped checkpoint (default: write nothing, only report the swap)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing --output file')
    parser.add_argument('--verbose', action='store_true', help='list every replaced module')
    return parser


@command('swap-activations')
def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_console_logging()
    if args.output and os.path.exists(args.output) and not args.overwrite:
        parser.error(f"--output '{args.output}' exists: give another path, or --overwrite to replace it")
    sources = list(args.source) + (['leaky_relu'] if args.leaky and 'leaky_relu' not in args.source else [])
    try:
        kwargs = {'num_classes': args.num_classes} if args.num_classes is not None else {}
        model = create_model(args.model, pretrained=args.pretrained, **kwargs)
        if args.checkpoint:
            previous = load_model_checkpoint(model, args.checkpoint, use_ema=args.use_ema)
            if previous is not None:
                print(f'{args.checkpoint} was already swapped to {previous.act}; swapping on top of it.')
        report = swap_activations(model, args.act, sources, input_size=args.input_size)
    except (ModelError, ValueError) as e:
        print(f'swap-activations: error: {e}', file=sys.stderr)
        return 2

    print(f'{args.model}: {len(report)} activation modules replaced')
    print(report.table())
    if args.verbose:
        for name, old in report:
            print(f'  {name}: {old} -> {report.act}')

    input_size = tuple(args.input_size or model.pretrained_cfg.get('input_size', (3, 224, 224)))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *input_size))
    finite = bool(torch.isfinite(out).all())
    print(f'forward check: input {(2, *input_size)} -> output {tuple(out.shape)}, finite={finite}')
    if not finite:
        print('swap-activations: error: the swapped model produced non-finite outputs', file=sys.stderr)
        return 1

    if not args.output:
        print(f'nothing written: --output FILE saves the swapped checkpoint, e.g. --output '
              f'{args.model}-{report.act}.pth.tar')
        return 0
    output = args.output
    record = report.as_dict()
    atomic_save({'arch': args.model, 'state_dict': model.state_dict(), SWAP_KEY: record,
                 'num_classes': model.num_classes if hasattr(model, 'num_classes') else None}, output)
    print(f'saved {os.path.abspath(output)} (swap recorded under "{SWAP_KEY}")')
    print(f'fine-tune: timm-train --model {args.model} --initial-checkpoint {output} '
          f'--gradreg gradnorm ... (the recorded swap is re-applied automatically)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
