"""timm-train: drop-in for timm's train.py with the gradreg regularizers (also under torchrun)."""
import sys
from typing import List, Optional

from ..models.loading import ModelError
from ..train import (Trainer, TrainingError, TrainingInterrupted, config_yaml, global_batch_note, parse_args,
                     resolve_config)
from ..train.fsdp import check_fsdp
from ..train.memory import default_gpu_memory, memory_advice, predict_memory
from ..utils.exit_codes import ExitCode
from ..utils.device import default_device
from ..utils.threads import set_cpu_threads
from .console import command, setup_console_logging


def dry_run_notes(cfg) -> List[str]:
    """The lines ``--dry-run`` adds under the configuration: the global batch against the paper's, how ``--fsdp``
    trains the method, the predicted memory per GPU and, with a GPU size, whether it fits."""
    notes = [note for note in [global_batch_note(cfg), check_fsdp(cfg)] if note]
    if cfg.predict_memory:
        prediction = predict_memory(cfg)
        notes.append(prediction.describe(cfg.batch_size))
        gpu_memory = cfg.gpu_memory or default_gpu_memory()
        if gpu_memory:
            notes.append(memory_advice(cfg, prediction, gpu_memory))
    return notes


@command('timm-train')
def main(argv: Optional[List[str]] = None) -> int:
    setup_console_logging()
    args, args_text = parse_args(argv)
    if args.dry_run:
        cfg = resolve_config(args)
        print(config_yaml(cfg), end='')
        for note in dry_run_notes(cfg):
            print(f'# {note}')  # YAML comments: the output stays loadable
        return 0
    trainer = None
    try:
        if default_device(args.device) == 'cpu':
            set_cpu_threads(args.threads)
        trainer = Trainer(args, args_text)
        trainer.fit()
    except TrainingInterrupted as e:
        print(f'timm-train: {e}', file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # before training started (setup, data preparation): nothing to save
        if trainer is not None:
            trainer.discard_unused_output()
        print('timm-train: interrupted before training started; nothing was saved.', file=sys.stderr)
        return ExitCode.INTERRUPTED
    except (TrainingError, ModelError) as e:
        if trainer is not None:
            trainer.discard_unused_output()
        print(f'timm-train: error: {e}', file=sys.stderr)
        return ExitCode.REFUSED
    return ExitCode.FINISHED


if __name__ == '__main__':
    sys.exit(main())
