"""Every registered task against timm train.py's step options: trains with the right update, or is refused.

    python benchmarks/compat_matrix.py                        # writes docs/compatibility.md (minutes on a CPU)
    python benchmarks/compat_matrix.py --tasks gradnorm --options amp-bf16 channels-last

Each cell is one SGD step (no momentum, no weight decay, a learning rate of 1e4 so that the update
dominates the weights and reads back without rounding) of timm-train's own Trainer on 8 images, so
(θ₀ − θ₁)/lr is the step's gradient (or, where the option changes the
update itself — clipping, layer decay — the update). It is compared with the same step run in
float64 eager mode without the option when the option only changes how the step is computed
(precision, memory layout, checkpointing, compilation, accumulation), and with it when the option
defines the loss or the update (mixup, smoothing, BCE, clipping, layer decay). Random draws of the
tasks (noise, random starts) are taken into contiguous float32 tensors in every run, so all see the same
numbers whatever the dtype or memory format. A
combination the front end refuses is shown with its one line.

Sign ties: the L1 norm's subgradient and an attack's sign step are discontinuous at zero, so a component
within rounding of zero takes either sign and one flip moves a whole pixel of the attack or of the penalty's
direction (GradNorm under --bce-loss: one input-gradient component of 2e-12 flipped, and the step moved by
4e-5). The float64 reference records the sign of every ``sign``/``abs`` input and the measured run takes
the reference's sign where its own differs, when at most 1% of a call's components differ (``_Ties``);
the cell shows how many it resolved. A dropped GradScaler, an underflowed gradient or a wrong penalty
changes most signs and is measured as it is.

Tolerances on the relative L2 error of the update. Float32 options: 1e-5, or 4× the column's floor
where the task's own plain float32 step against float64 is above 1e-5 (finite differences cancel digits;
TRADES's KL compares two nearly equal predictions); the rows that train BatchNorm take the floor of the plain
step with BatchNorm in train mode (ELLE's linearity error compares three losses coupled through the batch's
statistics). Mixed precision: autocast rounds the operands of every
matmul and convolution to its unit roundoff, and the row's floor is what that does to a plain
cross-entropy step (the natural task: one forward and one backward pass, measured in the same run). A
regularized step of p network passes, each rounded as the plain step's passes are, has at most p/2 times
that error if the passes' errors add. The tasks that train under autocast take at most 8 passes (PGD-3:
three attack forward and backward passes, then the training forward and backward; double backprop:
4), so a cell passes within 4× the row's floor. A dropped GradScaler, an underflowed float16 input gradient
or a penalty lost to autocast changes the step by a large share of itself and lands far above it. Under
float16 the harness lowers the GradScaler's starting scale as its own back-off does after a skipped step,
so the cell is the first step training applies.
"""
import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from timm.layers import set_fast_norm  # noqa: E402

from timm_gradreg import list_tasks  # noqa: E402
from timm_gradreg.train import Trainer, TrainingError, parse_args  # noqa: E402

FLOAT32_TOLERANCE = 1e-5
#: a mixed-precision cell passes within this many times the natural task's error in its row
FLOOR_FACTOR = 4.0
#: the step's learning rate: large, so that θ₁ is the update and reading it back (θ₀ − θ₁)/LR loses no digits
LR = 1e4


@dataclass(frozen=True)
class CompatOption:
    """A timm train.py option of the matrix: its flags, whether the float64 reference keeps them (they define
    the loss or the update) and the tolerance of its cells."""
    name: str
    flags: Tuple[str, ...]
    defines_step: bool = False
    mixed_precision: bool = False
    note: str = ''
    defines_step_for: Tuple[str, ...] = ()  # tasks whose loss the option changes (kept in their reference)


#: tasks whose loss couples the images of a batch: accumulation and DDP take it per micro-batch, as the official
#: multi-GPU runs do
BATCH_COUPLED = ('edge', 'igr')

OPTIONS: Dict[str, CompatOption] = {o.name: o for o in [
    CompatOption('float32', (), note='the plain step'),
    CompatOption('float32-train-bn', ('--no-bn-eval',), defines_step=True,
                 note='the plain step with BatchNorm in train mode: the column floor of the rows that train '
                      'BatchNorm'),
    CompatOption('amp-fp16', ('--amp', '--amp-dtype', 'float16'), mixed_precision=True,
                 note='autocast float16 with GradScaler'),
    CompatOption('amp-bf16', ('--amp', '--amp-dtype', 'bfloat16'), mixed_precision=True, note='autocast bfloat16'),
    CompatOption('channels-last', ('--channels-last',)),
    CompatOption('grad-checkpointing', ('--grad-checkpointing',)),
    CompatOption('torchcompile', ('--torchcompile', 'inductor')),
    CompatOption('grad-accum-2', ('--grad-accum-steps', '2', '-b', '4'), defines_step_for=BATCH_COUPLED,
                 note='2 batches of 4 against 1 of 8; for ' + ', '.join(BATCH_COUPLED) + ', whose loss is defined on '
                      'the batch (edge: the official batch-RMS cosine; igr: the authors\' gradient of the batch-mean '
                      'CE), against the float64 step of the same 2 batches of 4, as DDP computes them per process'),
    CompatOption('model-ema', ('--model-ema', '--model-ema-decay', '0.9')),
    CompatOption('mixup', ('--mixup', '0.8'), defines_step=True),
    CompatOption('cutmix', ('--cutmix', '1.0'), defines_step=True),
    CompatOption('smoothing', ('--smoothing', '0.1'), defines_step=True),
    CompatOption('bce-loss', ('--bce-loss',), defines_step=True),
    CompatOption('bce-sum', ('--bce-loss', '--bce-sum'), defines_step=True),
    CompatOption('jsd-loss', ('--jsd-loss', '--aug-splits', '3')),
    CompatOption('clip-agc', ('--clip-grad', '0.05', '--clip-mode', 'agc'), defines_step=True),
    CompatOption('fast-norm', ('--fast-norm',)),
    CompatOption('layer-decay', ('--layer-decay', '0.75'), defines_step=True),
    CompatOption('dist-bn', ('--dist-bn', 'reduce', '--no-bn-eval'), defines_step=True,
                 note='BatchNorm in train mode; averages BatchNorm statistics across processes after each epoch, outside the step'),
    CompatOption('aug-repeats', ('--aug-repeats', '2'),
                 note="timm's repeated-augmentation sampler, which needs several processes: it chooses which images "
                      'a process sees, and the step on them is the plain one'),
    CompatOption('sync-bn', ('--sync-bn', '--no-bn-eval'), defines_step=True,
                 note='one process: plain BatchNorm in train mode; 2 processes: tests/test_distributed_gradients.py'),
]}

#: task variants of the matrix: (label, --gradreg and its deterministic settings)
TASKS: Dict[str, Tuple[str, ...]] = {
    **{name: ('--gradreg', name) for name in list_tasks()},
    'gradnorm-fd': ('--gradreg', 'gradnorm', '--gn-impl', 'fd'),
    'pgd2': ('--gradreg', 'pgd', '--attack-algorithm', 'apgd', '--attack-steps', '2', '--no-attack-random-start'),
}
_WARMUPS = {'gradnorm': ('--gn-warmup-epochs', '0'), 'pgd': ('--attack-warmup-epochs', '0'),
            'fgsm': ('--attack-warmup-epochs', '0')}


#: the most components of one sign/abs call whose sign may differ from the reference and still count as ties
TIE_SHARE = 1e-2


class _Ties(TorchFunctionMode):
    """Resolves sign ties as the float64 reference does. The L1 norm's subgradient and an attack's sign step are
    discontinuous at zero: a component within rounding of zero (|g| of 1e-12 beside a median of 1e-5) takes
    either sign, and one such flip moves a whole pixel of the attack or of the penalty's direction. The reference
    run records the sign of every ``sign``/``abs`` input; the measured run, call by call, takes the reference's
    sign where its own differs, provided no more than TIE_SHARE of the call's components differ (a dropped
    scaler, an underflowed gradient or a wrong penalty changes most signs and is measured as it is). ``abs`` stays
    differentiable: x·s with s the reference's sign. Under accumulation each micro-batch pairs with its rows of the
    reference's calls; a call that pairs with none ends the replay."""

    _FUNCS = (torch.sign, torch.Tensor.sign, torch.abs, torch.Tensor.abs)

    def __init__(self, record: Optional[List[torch.Tensor]] = None):
        super().__init__()
        self.recording = record is None
        self.signs: List[torch.Tensor] = [] if record is None else list(record)
        self.restart()

    def restart(self) -> None:
        """Start a run again (GradScaler's skipped steps rerun it)."""
        if self.recording:
            self.signs = []
        self.ties, self.untied, self._next, self._row, self._paired = 0, 0, 0, 0, True

    def _reference(self, shape: torch.Size) -> Optional[torch.Tensor]:
        """The recorded sign for the next call: the same call of the reference, or, under accumulation, its rows
        of the micro-batch (the recorded calls are replayed once per micro-batch); None once calls no longer pair."""
        if not self._paired or not self.signs:
            return None
        if self._next == len(self.signs):  # the next micro-batch runs the same calls on the following rows
            self._next, self._row = 0, self._row + shape[0]
        recorded = self.signs[self._next]
        if recorded.shape[1:] != shape[1:] or self._row + shape[0] > recorded.shape[0]:
            self._paired = False
            return None
        self._next += 1
        return recorded[self._row:self._row + shape[0]]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self._FUNCS or not args or not torch.is_tensor(args[0]) or not args[0].is_floating_point():
            return func(*args, **kwargs)
        x = args[0]
        with torch.no_grad():
            own = torch.sign(x.detach()).to(torch.int8)
        if self.recording:
            self.signs.append(own)
            return func(*args, **kwargs)
        reference = self._reference(own.shape)
        if reference is None:
            return func(*args, **kwargs)
        flips = own != reference
        count = int(flips.sum())
        if count == 0:
            return func(*args, **kwargs)
        if count > TIE_SHARE * own.numel():
            self.untied += count
            return func(*args, **kwargs)
        self.ties += count
        ref = reference.to(x.dtype)
        if func in (torch.sign, torch.Tensor.sign):
            return ref
        return x * ref


class _SameDraws(TorchFunctionMode):
    """Random draws that do not depend on the tensor's dtype or memory format: each is taken into a contiguous
    float32 tensor and copied, so a float64 or channels-last run sees the plain float32 run's numbers."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.randn_like, torch.rand_like):
            x = args[0]
            return func(torch.empty(x.shape, dtype=torch.float32, device=x.device), **kwargs).to(x.dtype)
        if func in (torch.Tensor.uniform_, torch.Tensor.normal_):
            draw = func(torch.empty(args[0].shape, dtype=torch.float32, device=args[0].device), *args[1:], **kwargs)
            return args[0].copy_(draw)
        return func(*args, **kwargs)


@dataclass
class Cell:
    """One task × option: the relative error of the update against the reference, or the refusal line."""
    task: str
    option: str
    error: Optional[float] = None
    tolerance: Optional[float] = None
    refused: str = ''
    floor: bool = False  # the cell is the floor of its row or column
    ties: int = 0  # sign ties resolved as in the reference (_Ties)

    @property
    def works(self) -> bool:
        return not self.refused and self.error is not None and self.tolerance is not None and \
            self.error <= self.tolerance

    def markdown(self) -> str:
        if self.refused:
            return 'refused¹'
        ties = f' ({self.ties} tie{"s" * (self.ties > 1)})' if self.ties else ''
        if self.floor:
            return f'floor {self.error:.1e}{ties}'
        return f"{'✓' if self.works else '✗'} {self.error:.1e}{ties}"


def write_images(folder: str, count: int = 8, classes: int = 4, size: int = 32) -> str:
    """An image folder of ``count`` seeded noise images in ``classes`` class folders (train split only)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        path = os.path.join(folder, 'train', str(i % classes))
        os.makedirs(path, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(path, f'{i}.png'))
    return folder


def _base_argv(data: str, start: str, output: str, model: str) -> List[str]:
    return ['--data-dir', data, '--model', model, '--model-kwargs', 'act_layer=gelu', '--num-classes', '4',
            '--input-size', '3', '32', '32', '--crop-pct', '1.0', '--no-aug', '-b', '8', '--epochs', '1',
            '--opt', 'momentum', '--momentum', '0', '--weight-decay', '0', '--lr', str(LR), '--sched', 'step',
            '--warmup-epochs', '0', '--smoothing', '0', '--workers', '0', '--device', 'cpu', '--val-split', '',
            '--eval-metric', 'loss', '--bn-eval', '--seed', '0', '--initial-checkpoint', start, '--output', output,
            '--experiment', 'run', '--log-interval', '100', '--threads', str(torch.get_num_threads())]


def _parse(argv: Sequence[str]) -> Tuple[Optional[argparse.Namespace], str, str]:
    """timm-train's arguments and config text, or the line with which its front end refuses them."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args, text = parse_args(list(argv))
    except SystemExit:
        return None, '', next((l for l in err.getvalue().splitlines() if 'error:' in l), err.getvalue().strip())
    return args, text, ''


def _update(argv: Sequence[str], ties: Optional[_Ties] = None) -> Tuple[Optional[Dict[str, torch.Tensor]], str]:
    """θ₀ − θ₁ of one step of timm-train's Trainer (float64), or the line with which the front end refuses it;
    ``ties`` records the run's signs or resolves its ties as recorded (``_Ties``)."""
    args, text, refused = _parse(argv)
    if refused:
        return None, refused
    before = torch.load(args.initial_checkpoint, weights_only=False)['state_dict']
    scale = 2.0 ** 16  # torch's GradScaler starts there and halves after each step that overflows
    while True:
        try:
            if ties is not None:
                ties.restart()
            with _SameDraws(), (ties if ties is not None else contextlib.nullcontext()):
                trainer = Trainer(args, text).setup()
                if trainer.loss_scaler is not None:
                    trainer.loss_scaler._scaler._init_scale = scale
                trainer.fit()
        except (TrainingError, RuntimeError) as e:
            return None, f'timm-train: error: {e}'.splitlines()[0]
        finally:
            set_fast_norm(False)  # --fast-norm is process-wide in timm: the next cell starts without it
        module = trainer.task.get_trainable_module()
        after = getattr(module, '_orig_mod', module).state_dict()  # a compiled module keeps the model there
        update = {k: (before[k].double() - after[k].double()) / LR for k in before if before[k].is_floating_point()
                  and 'running' not in k and 'num_batches' not in k}
        skipped = all(v.abs().max() == 0 for v in update.values())
        if not (skipped and trainer.loss_scaler is not None and scale > 1.0):
            return update, ''
        scale /= 2  # the step GradScaler skips, as training skips its first steps until the scale fits


def _relative_error(update: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor]) -> float:
    a = torch.cat([update[k].flatten() for k in reference])
    b = torch.cat([reference[k].flatten() for k in reference])
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def measure_cell(task: str, option: CompatOption, work: str, model: str = 'test_resnet') -> Cell:
    """One cell of the matrix (see the module docstring)."""
    data = os.path.join(work, 'data')
    if not os.path.isdir(data):
        write_images(data)
    start = os.path.join(work, f'{model}.pth.tar')
    if not os.path.exists(start):
        import timm
        torch.manual_seed(0)
        torch.save({'state_dict': timm.create_model(model, num_classes=4, act_layer='gelu').state_dict()}, start)
    gradreg = TASKS[task]
    method = dict(zip(gradreg[::2], gradreg[1::2]))['--gradreg']
    common = [*gradreg, *_WARMUPS.get(method, ()), *(('--no-attack-random-start',) if method in ('pgd', 'fgsm')
                                                     else ())]
    _, _, refused = _parse(_base_argv(data, start, work, model) + common + list(option.flags))
    if refused:  # refused before anything runs
        return Cell(task, option.name, refused=refused)
    kept = list(option.flags) if option.defines_step or method in option.defines_step_for else []
    recorded = _Ties()
    reference, refused = _update(_base_argv(data, start, tempfile.mkdtemp(dir=work), model) + common + kept +
                                 ['--model-dtype', 'float64'], recorded)
    if refused:
        return Cell(task, option.name, refused=f'(the float64 reference) {refused}')
    ties = _Ties(recorded.signs)
    update, refused = _update(_base_argv(data, start, tempfile.mkdtemp(dir=work), model) + common +
                              list(option.flags), ties)
    if refused:
        return Cell(task, option.name, refused=refused)
    return Cell(task, option.name, error=_relative_error(update, reference), ties=ties.ties)


#: the plain float32 steps, BatchNorm frozen and in train mode: the column floors (a row that trains BatchNorm
#: takes the second: a loss that couples a batch's images through its statistics rounds differently)
_PLAIN_ROWS = ('float32', 'float32-train-bn')


def set_floor_tolerances(cells: List[Cell]) -> None:
    """Each cell's tolerance (module docstring): 1e-5, or FLOOR_FACTOR × the floor of its row (the natural task
    under that mixed precision) or of its column (the task's own plain float32 step, where that is above 1e-5; with
    BatchNorm in train mode for the rows that train it)."""
    rows = {c.option: c.error for c in cells if c.task == 'natural' and OPTIONS[c.option].mixed_precision
            and c.error is not None}
    plain = {option: {c.task: c.error for c in cells if c.option == option and c.error is not None
                      and c.error > FLOAT32_TOLERANCE} for option in _PLAIN_ROWS}
    for c in cells:
        if c.error is None:
            continue
        if (c.task == 'natural' and c.option in rows) or (c.option in _PLAIN_ROWS and c.task in plain[c.option]):
            c.tolerance, c.floor = c.error, True
            continue
        column = plain['float32-train-bn' if '--no-bn-eval' in OPTIONS[c.option].flags else 'float32'].get(c.task)
        floors = [FLOOR_FACTOR * f for f in (rows.get(c.option), column) if f is not None]
        if OPTIONS[c.option].mixed_precision and c.option not in rows:
            continue  # no floor measured for this row: no verdict
        c.tolerance = max([FLOAT32_TOLERANCE, *floors])


def format_matrix(cells: List[Cell]) -> str:
    """docs/compatibility.md: the table (task columns, option rows) and every refusal line."""
    tasks = list(dict.fromkeys(c.task for c in cells))
    options = list(dict.fromkeys(c.option for c in cells))
    by_key = {(c.task, c.option): c for c in cells}
    lines = ['# Compatibility: tasks × timm train.py step options', '',
             'Generated by `python benchmarks/compat_matrix.py` (one SGD step of timm-train\'s Trainer per cell, on a',
             'CPU; method and tolerances in the script\'s docstring). A cell is the relative L2 error of the step\'s',
             'parameter update against a float64 eager reference of the same loss: ✓ within the tolerance of its',
             'row, ✗ above it; "refused" cells are refused before the first step with the line below the table.',
             '"(n ties)": n sign components within rounding of zero (an L1 subgradient, an attack\'s sign step) took',
             'the float64 reference\'s sign, as the script\'s docstring explains.', '',
             '| option (tolerance) | ' + ' | '.join(tasks) + ' |', '|---|' + '---|' * len(tasks)]
    for option in options:
        row = [by_key[(t, option)].markdown() if (t, option) in by_key else '' for t in tasks]
        floor = by_key.get(('natural', option))
        tolerance = (f'{FLOOR_FACTOR:g}× natural\'s {floor.error:.1e}' if OPTIONS[option].mixed_precision and floor
                     and floor.error is not None else f'{FLOAT32_TOLERANCE:.0e} or {FLOOR_FACTOR:g}× the column\'s floor')
        lines.append(f'| `{option}` ({tolerance}) | ' + ' | '.join(row) + ' |')
    refusals: Dict[Tuple[str, str], List[str]] = {}
    for c in cells:
        if c.refused:
            refusals.setdefault((c.option, c.refused), []).append(c.task)
    if refusals:
        lines += ['', '¹ Refusals, each as timm-train prints it:', '']
        for (option, line), refused_tasks in refusals.items():
            which = 'every task' if len(refused_tasks) == len(tasks) else ', '.join(refused_tasks)
            lines.append(f'- `{option}`, {which}: {line}')
    notes = [f'- `{o.name}` = `{" ".join(o.flags) or "(none)"}`' + (f': {o.note}' if o.note else '')
             for o in OPTIONS.values() if o.name in options]
    lines += ['', 'The options:', '', *notes, '']
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tasks', nargs='+', default=list(TASKS), choices=list(TASKS))
    parser.add_argument('--options', nargs='+', default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument('--output', default=os.path.join(ROOT, 'docs', 'compatibility.md'))
    parser.add_argument('--record', default=os.path.join(ROOT, 'results', 'compatibility.json'))
    parser.add_argument('--from-record', action='store_true',
                        help='write --output from the committed --record without measuring')
    parser.add_argument('--update', action='store_true',
                        help='measure the given --tasks x --options and replace those cells of --record, keeping the '
                             'others (the tolerances are set again from all cells)')
    args = parser.parse_args(argv)
    if args.from_record or args.update:
        with open(args.record) as f:
            recorded = [Cell(**cell) for cell in json.load(f)['cells']]
    if args.from_record:
        with open(args.output, 'w') as f:
            f.write(format_matrix(recorded))
        print(f'wrote {args.output} from {args.record}')
        return 0
    logging.getLogger().setLevel(logging.ERROR)
    cells = []
    with tempfile.TemporaryDirectory() as work:
        for option in args.options:
            for task in args.tasks:
                cell = measure_cell(task, OPTIONS[option], work)
                cells.append(cell)
                shown = f'{cell.error:.1e}' if cell.error is not None else 'refused'
                print(f'{task:>12} × {option:<18} {shown:<10} {cell.refused}', flush=True)
    if args.update:
        measured = {(c.task, c.option): c for c in cells}
        cells = [measured.pop((c.task, c.option), c) for c in recorded] + list(measured.values())
    set_floor_tolerances(cells)
    text = format_matrix(cells)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, 'w') as f:
        f.write(text)
    os.makedirs(os.path.dirname(args.record), exist_ok=True)
    with open(args.record, 'w') as f:
        json.dump({'torch': torch.__version__, 'cells': [c.__dict__ for c in cells]}, f, indent=1)
    print(f'wrote {args.output} and {args.record}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
