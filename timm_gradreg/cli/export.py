"""gradreg-export: a trained checkpoint as a timm Hub folder (config.json, model.safetensors, a model card with
its robustness), loadable offline with ``timm.create_model('local-dir:OUT', pretrained=True)``."""
import argparse
import os
import sys
from typing import List, Optional

from ..hub import export_hub, push_to_hub
from ..models.loading import ModelError
from ..utils.exit_codes import ExitCode
from ..utils.files import OutputPathError, check_output_path
from ..utils.parser import ArgumentParser
from .console import command, setup_console_logging

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog='gradreg-export',
        description="Write a trained checkpoint as a timm Hub folder: config.json (the architecture, its model "
                    "arguments and the data config it was trained with), model.safetensors and a README.md model "
                    "card (the method and, with --results, gradreg-eval's robustness table).",
        epilog='Example: gradreg-export output/fmnist/gradnorm/last.pth.tar hub/gradnorm --results '
               'output/eval/results.json; then timm.create_model("local-dir:hub/gradnorm", pretrained=True)')
    parser.add_argument('checkpoint', metavar='CHECKPOINT', help='timm-train, timm or swap-activations checkpoint')
    parser.add_argument('output', metavar='OUT', help='the folder to write (created; an existing one is refused)')
    parser.add_argument('--results', default=None, metavar='JSON',
                        help="gradreg-eval's results.json that evaluated CHECKPOINT: its table goes into the card")
    parser.add_argument('--use-ema', action='store_true', help='export the EMA weights')
    parser.add_argument('--push-to-hub', default=None, metavar='REPO',
                        help='then upload the folder to this Hugging Face Hub repo (needs a network and a token)')
    return parser


@command('gradreg-export')
def main(argv: Optional[List[str]] = None) -> int:
    setup_console_logging()
    args = build_parser().parse_args(argv)
    try:
        check_output_path(args.output, option='OUT')
        if os.path.exists(args.output) and os.listdir(args.output):
            raise OutputPathError(f"OUT '{args.output}' exists and is not empty: give a new folder.")
        export = export_hub(args.checkpoint, args.output, use_ema=args.use_ema, results=args.results)
        print(f"Wrote {args.output}: config.json, model.safetensors, README.md"
              f"{' (with the robustness table)' if export.evaluated else ''}; load it with "
              f"timm.create_model({export.name!r}, pretrained=True)")
        if args.push_to_hub:
            print(f'Pushed to {push_to_hub(args.output, args.push_to_hub)}')
    except (ModelError, OutputPathError, FileNotFoundError, ValueError) as e:
        print(f'gradreg-export: error: {e}', file=sys.stderr)
        return ExitCode.REFUSED
    return ExitCode.FINISHED


if __name__ == '__main__':
    sys.exit(main())
