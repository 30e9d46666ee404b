"""Run an unmodified timm ``train.py`` with a gradreg method in place of its ClassificationTask (the library of
the gradreg-launch command, ``timm_gradreg.cli.launch``).

    gradreg-launch train.py --data-dir /imagenet --model resnet50 --gradreg gradnorm --swap-activations gelu ...
    torchrun --nproc_per_node 8 -m timm_gradreg.cli.launch train.py -c args.yaml --gradreg gradnorm ...

The gradreg options (``timm-train --help``'s gradreg groups: ``--gradreg``, each method's
options, ``--swap-activations``, ``--bn-eval``, ``--train-in-eval-mode``, ``--adv-val-*``) are taken
off the command line and out of the ``-c`` YAML; everything else goes to train.py, which is
imported as a module (its ``if __name__ == '__main__'`` does not run) and driven by its own
``main()``, with these of its names rebound:

* ``ClassificationTask`` builds the chosen task (``create_task``), after the activation swap;
* ``_parse_args`` adds the gradreg options to the args it saves (args.yaml, checkpoints);
* ``resolve_data_config`` and ``NativeScaler`` are observed (the task needs the normalization
  and the fp16 GradScaler);
* ``train_one_epoch`` gets a loader that sets the task's schedule position before each batch
  and freezes BatchNorm (``--bn-eval``) or the whole model (``--train-in-eval-mode``);
* ``validate`` adds ``advtop1``, top-1 under PGD, usable as ``--eval-metric``;
* ``create_dataset`` finds a standard set on disk (``--dataset fashion_mnist``, ``data.DATA_SOURCES``).

``--model-dtype float64``, which train.py's own check refuses, is taken by the launcher: the model is built
in float64 (torch's default dtype for the run) and the loaders' images are cast to it, for gradient checks
against finite differences or another process count.

It works with the train.py of timm 1.0.27 and later (the task API it drives).
"""
import argparse
import ast
import functools
import importlib.util
import inspect
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import yaml

from ..data import DATA_SOURCES, is_demo_dataset, resolve_dataset
from ..models.activations import swap_activations
from ..models.modes import freeze_batchnorm
from ..tasks import TaskSetupError, check_task_options, check_task_setup, create_task, task_kwargs
from ..utils.parser import ArgumentParser
from ..utils.threads import set_cpu_threads
from ..recipes import config_path
from ..utils.yaml_config import ConfigError, flags_given, load_config
from .args import (add_gradreg_args, add_threads_arg, check_distributed_options, check_method_options,
                   check_part_options)
from .trainer import schedule_position
from .validate import check_eval_metric, robust_accuracy

__all__ = ['split_gradreg_args', 'GradregTrainScript', 'LaunchError', 'gradreg_parser']


#: Top-level names of timm's train.py that the launcher rebinds or calls.
TRAIN_SCRIPT_NAMES = ('main', '_parse_args', 'train_one_epoch', 'validate', 'ClassificationTask', 'resolve_data_config')


class LaunchError(RuntimeError):
    """The script or the options cannot be launched; the message says why."""


def gradreg_parser() -> argparse.ArgumentParser:
    """The gradreg options the launcher takes off train.py's command line."""
    parser = ArgumentParser(prog='gradreg-launch', add_help=False)
    add_gradreg_args(parser)
    add_threads_arg(parser)
    return parser


def split_gradreg_args(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    """(gradreg options, the rest for train.py): flags first, then the ``-c`` YAML's gradreg keys as defaults.

    Gradreg keys in the YAML are checked strictly (a bad value is an error naming the key); the YAML
    itself still goes to train.py, whose parser ignores keys it does not know.
    """
    parser = gradreg_parser()
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument('-c', '--config', default='')
    config_args, _ = config.parse_known_args(argv)
    defaults: Dict[str, Any] = {}
    if config_args.config:
        dests = {a.dest for a in parser._actions}
        try:
            path = config_path(config_args.config)
            defaults = load_config(parser, path, only=dests)  # the other keys are train.py's
        except ConfigError as e:
            raise LaunchError(str(e)) from None
        parser.set_defaults(**defaults)
        argv = _with_config(argv, path)
    args, rest = parser.parse_known_args(argv)
    try:
        given = flags_given(parser, argv)
        check_method_options(args.gradreg, given, defaults.get('gradreg'), set(defaults))
        check_part_options(args.gradreg, args, given | set(defaults))
    except ValueError as e:
        raise LaunchError(str(e)) from None
    return args, rest


def _with_config(argv: Sequence[str], path: str) -> List[str]:
    """``argv`` with its ``-c/--config`` value replaced by ``path`` (a packaged recipe's file for train.py)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ('-c', '--config') and i + 1 < len(argv):
            out += [arg, path]
            i += 2
            continue
        if arg.startswith('--config='):
            arg = f'--config={path}'
        elif arg.startswith('-c') and len(arg) > 2 and not arg.startswith('--'):
            arg = f'-c{path}'
        out.append(arg)
        i += 1
    return out


class _CastLoader:
    """A loader whose floating-point images are cast to ``dtype`` (None: left as they are)."""

    def __init__(self, loader, dtype: Optional[torch.dtype] = None):
        self._loader, self._dtype = loader, dtype

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def _cast(self, batch):
        if self._dtype is None or not isinstance(batch, (tuple, list)) or not torch.is_tensor(batch[0]) \
                or not batch[0].is_floating_point():
            return batch
        return type(batch)([batch[0].to(self._dtype), *batch[1:]])

    def __iter__(self):
        for batch in self._loader:
            yield self._cast(batch)


class _ScheduledLoader(_CastLoader):
    """A training loader that moves the task's schedule to each batch's position and sets module modes."""

    def __init__(self, loader, task, epoch: int, accum_steps: int, options: argparse.Namespace,
                 dtype: Optional[torch.dtype] = None):
        super().__init__(loader, dtype)
        self._task, self._epoch, self._accum, self._options = task, epoch, accum_steps, options

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __iter__(self):
        module = self._task.get_trainable_module()
        if self._options.train_in_eval_mode:
            module.eval()
        elif self._options.bn_eval:
            freeze_batchnorm(module)
        batches = len(self._loader)
        for batch_idx, batch in enumerate(self._loader):
            self._task.set_epoch(schedule_position(self._epoch, batch_idx, batches, self._accum))
            yield self._cast(batch)


class GradregTrainScript:
    """A user's train.py, imported and driven with a gradreg task (see the module docstring)."""

    def __init__(self, path: str, options: argparse.Namespace):
        if not os.path.isfile(path):
            raise LaunchError(f"train script '{path}' does not exist")
        self.path = os.path.abspath(path)
        self.options = options
        self.task_kwargs = task_kwargs(options.gradreg, options)
        self.task = None
        self.data_config: Optional[Dict[str, Any]] = None
        self.grad_scaler = None
        self.args: Optional[argparse.Namespace] = None
        self.input_dtype: Optional[torch.dtype] = None  # float64 runs: the loaders' images are cast to it
        self.module = self._import()
        self._rebind()

    def _import(self):
        self._check_source()
        sys.path.insert(0, os.path.dirname(self.path))  # as `python train.py` would
        spec = importlib.util.spec_from_file_location('gradreg_train_script', self.path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def _check_source(self) -> None:
        """Refuse, before running a line of it, a file that does not define the names of timm's train.py."""
        try:
            with open(self.path, 'rb') as f:
                tree = ast.parse(f.read(), filename=self.path)
        except (SyntaxError, ValueError, UnicodeDecodeError) as e:
            raise LaunchError(f"'{self.path}' is not a Python script ({type(e).__name__}: {e}); gradreg-launch "
                              "drives timm's train.py") from None
        defined = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((alias.asname or alias.name).split('.')[0] for alias in node.names)
            elif isinstance(node, ast.Assign):
                defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        missing = [name for name in TRAIN_SCRIPT_NAMES if name not in defined]
        if missing:
            raise LaunchError(f"'{self.path}' does not look like timm's train.py (it defines no "
                              f"{', '.join(missing)}); gradreg-launch drives the train.py of timm >= 1.0.27, "
                              'unedited, and runs nothing else')

    def _rebind(self) -> None:
        m = self.module
        m._parse_args = self._wrap_parse_args(m._parse_args)
        m.resolve_data_config = self._wrap_resolve_data_config(m.resolve_data_config)
        m.ClassificationTask = self._create_task
        m.train_one_epoch = self._wrap_train_one_epoch(m.train_one_epoch)
        m.validate = self._wrap_validate(m.validate)
        if hasattr(m, 'NativeScaler'):
            m.NativeScaler = self._wrap_scaler(m.NativeScaler)
        if hasattr(m, 'create_dataset'):
            m.create_dataset = self._wrap_create_dataset(m.create_dataset)

    # --- the rebound names -----------------------------------------------------------------------
    def _wrap_parse_args(self, parse):
        @functools.wraps(parse)
        def parse_args(*a, **kw):
            args, _ = parse(*a, **kw)
            if getattr(args, 'device', None) == 'cuda' and not torch.cuda.is_available():
                print('gradreg-launch: no CUDA device here; train.py runs with --device cpu', file=sys.stderr)
                args.device = 'cpu'
            if str(getattr(args, 'device', 'cpu')).startswith('cpu'):
                set_cpu_threads(self.options.threads)
            self._check(args)
            if getattr(args, 'model_dtype', None) == 'float64':
                self._use_float64(args)
            vars(args).update(vars(self.options))
            self.args = args
            return args, yaml.safe_dump(args.__dict__, default_flow_style=False)
        return parse_args

    def _check(self, args: argparse.Namespace) -> None:
        """The task's refusals (its own, and ``check_task_setup``'s, as timm-train's) against train.py's own options."""
        try:
            check_task_options(self.options.gradreg, self.task_kwargs)
            check_task_setup(self.options.gradreg, self.task_kwargs, compile=getattr(args, 'torchcompile', None),
                             torchscript=getattr(args, 'torchscript', False),
                             model_dtype=getattr(args, 'model_dtype', None), amp=getattr(args, 'amp', False),
                             sync_bn=getattr(args, 'sync_bn', False) and not self.options.bn_eval,
                             distill=bool(getattr(args, 'kd_model_name', None)))
            check_distributed_options(getattr(args, 'sync_bn', False), getattr(args, 'aug_repeats', 0),
                                      int(os.environ.get('WORLD_SIZE', '1')),
                                      torch.device(getattr(args, 'device', 'cpu')).type)
            if getattr(args, 'eval_metric', None) == 'advtop1':
                check_eval_metric('advtop1', self.options.adv_val_steps)
        except (TaskSetupError, ValueError) as e:
            raise LaunchError(str(e)) from None

    def _use_float64(self, args: argparse.Namespace) -> None:
        """Train in float64, which train.py's own dtype check does not allow: the model is created in torch's
        default dtype, set to float64 for the run, and train.py sees no dtype override."""
        if getattr(args, 'amp', False):
            raise LaunchError('--model-dtype float64 and --amp are alternatives: pick one.')
        torch.set_default_dtype(torch.float64)
        self.input_dtype = torch.float64
        args.model_dtype = None

    def _wrap_resolve_data_config(self, resolve):
        @functools.wraps(resolve)
        def resolve_data_config(*a, **kw):
            config = resolve(*a, **kw)
            if self.data_config is None:  # the first call is the model's training configuration
                self.data_config = config
            return config
        return resolve_data_config

    @staticmethod
    def _wrap_create_dataset(create):
        """The embedded demo sets (built on first use, ``--data-dir`` optional) and standard sets found on disk
        (``--dataset fashion_mnist``): timm's name and the prepared root."""
        @functools.wraps(create)
        def create_dataset(name, root=None, *a, **kw):
            if name in DATA_SOURCES or is_demo_dataset(name):
                try:
                    name, root = resolve_dataset(name, root, kw.get('download', False))
                except ValueError as e:
                    raise LaunchError(str(e)) from None
            return create(name, root, *a, **kw)
        return create_dataset

    def _wrap_scaler(self, scaler_cls):
        launcher = self

        class RecordedScaler(scaler_cls):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                launcher.grad_scaler = self
                if launcher.task is not None:
                    launcher.task.attach_grad_scaler(self)
        return RecordedScaler

    def _create_task(self, model, criterion=None, device=None, dtype=None, verbose=True, **kwargs):
        options = self.options
        if options.swap_activations:
            report = swap_activations(model, options.swap_activations, options.swap_source, check_functional=verbose)
            if verbose:
                print(f'gradreg: swapped {len(report)} activation modules to {report.act}: {report.counts()}',
                      file=sys.stderr)
        config = self.data_config or {}
        space = {k: config[k] for k in ('mean', 'std') if k in config}
        self.task = create_task(options.gradreg, model, criterion, device=device, dtype=dtype, verbose=verbose,
                                **space, **kwargs, **self.task_kwargs)
        if self.grad_scaler is not None:
            self.task.attach_grad_scaler(self.grad_scaler)
        return self.task

    def _wrap_train_one_epoch(self, train_one_epoch):
        signature = inspect.signature(train_one_epoch)

        @functools.wraps(train_one_epoch)
        def wrapped(*a, **kw):
            bound = signature.bind(*a, **kw)
            accum = getattr(bound.arguments.get('args'), 'grad_accum_steps', 1) or 1
            bound.arguments['loader'] = _ScheduledLoader(bound.arguments['loader'], self.task,
                                                         bound.arguments['epoch'], accum, self.options,
                                                         self.input_dtype)
            return train_one_epoch(*bound.args, **bound.kwargs)
        return wrapped

    def _wrap_validate(self, validate):
        signature = inspect.signature(validate)

        @functools.wraps(validate)
        def wrapped(*a, **kw):
            bound = signature.bind(*a, **kw)
            bound.arguments['loader'] = _CastLoader(bound.arguments['loader'], self.input_dtype)
            metrics = validate(*bound.args, **bound.kwargs)
            if self.options.adv_val_steps > 0 and self.data_config is not None:
                bound.apply_defaults()
                arguments = bound.arguments
                metrics.update(robust_accuracy(arguments['model'], arguments['loader'], self.data_config,
                                               arguments['args'], device=arguments['device'],
                                               amp_autocast=arguments['amp_autocast']))
            return metrics
        return wrapped

    def run(self, argv: Sequence[str]) -> Any:
        """Run train.py's main() with ``argv`` as its command line."""
        saved = sys.argv
        sys.argv = [self.path, *argv]
        try:
            return self.module.main()
        finally:
            sys.argv = saved
