"""gradreg-eval's pipeline, callable from Python as the trainer is: models loaded to take [0, 1] pixels, each
evaluated (clean, PGD sweep, AutoAttack, the gradient-masking checklist), the results written.

    >>> evaluator = Evaluator(args)          # args: gradreg-eval's options (``cli.evaluate.build_parser``)
    >>> results = evaluator.run()            # one dict per model
    >>> evaluator.write('output/eval')       # results.json, report.md, sweep.csv, robust_curve.png, flags

A finished PGD sweep and AutoAttack's finished attacks are kept in the output folder as they complete, so a
rerun with the same output resumes.
"""
import argparse
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from timm import utils

from ..core.normalization import normalized_model
from ..models.loading import load_eval_model
from ..utils.device import default_device
from ..utils.files import atomic_save
from ..utils.threads import set_cpu_threads
from .autoattack import run_autoattack
from .data import create_pixel_dataset, create_pixel_loader, load_batches, select_indices
from .interval import wilson_interval
from .report import markdown_report, plot_robust_curves, write_json, write_sweep_csv
from .robustbench import robustbench_model_info
from .robustness import PGDSweepConfig, pgd_sweep
from .sanity import SanityContext, masking_verdict, run_sanity_checks

__all__ = ['ModelSpec', 'resolve_models', 'init_device', 'gather_rows', 'evaluate_model', 'Evaluator']

_logger = logging.getLogger('timm_gradreg.eval')


class ModelSpec:
    """A model to evaluate: label, pixel-space model (normalization inside), its data config."""

    def __init__(self, label: str, model: nn.Module, data_config: Dict[str, Any], checkpoint: str,
                 architecture: str = ''):
        self.label, self.model, self.data_config, self.checkpoint = label, model, data_config, checkpoint
        self.architecture = architecture


def _label(checkpoint: str, model: str, used: List[str]) -> str:
    if checkpoint:
        parent = os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))
        stem = os.path.basename(checkpoint).split('.')[0]
        label = parent if stem in ('last', 'model_best') or stem.startswith('checkpoint-') else stem
    else:
        label = model
    base, i = label, 2
    while label in used:
        label, i = f'{base}-{i}', i + 1
    return label


def resolve_models(args: argparse.Namespace, device: torch.device) -> List[ModelSpec]:
    """Load every --checkpoint (or --model alone) for evaluation, wrapped to take [0, 1] pixels."""
    if not args.checkpoint and not args.model:
        raise ValueError('give --checkpoint PATH [PATH ...] and/or --model NAME [NAME ...]')
    names = list(args.model)
    checkpoints = list(args.checkpoint) or [''] * len(names)  # models as initialised, one per name
    if len(names) not in (0, 1, len(checkpoints)):
        raise ValueError(f'--model takes one name or one per checkpoint ({len(checkpoints)}), got {len(names)}')
    if args.labels and len(args.labels) != len(checkpoints):
        raise ValueError(f'--labels needs one name per model ({len(checkpoints)}), got {len(args.labels)}')
    overrides = {'input_size': args.input_size, 'crop_pct': args.crop_pct, 'interpolation': args.interpolation,
                 'mean': args.mean, 'std': args.std}
    specs: List[ModelSpec] = []
    for i, ckpt in enumerate(checkpoints):
        name = names[i] if len(names) == len(checkpoints) else (names[0] if names else None)
        model, cfg = load_eval_model(ckpt or None, name, use_ema=args.use_ema, swap=args.swap_activations,
                                     swap_source=args.swap_source, num_classes=args.num_classes,
                                     pretrained=args.pretrained, data_overrides=overrides)
        label = args.labels[i] if args.labels else _label(ckpt, name or '', [s.label for s in specs])
        pixel_model = normalized_model(model, cfg['mean'], cfg['std']).to(device).eval()
        architecture = getattr(model, 'pretrained_cfg', {}).get('architecture') or name or type(model).__name__
        specs.append(ModelSpec(label, pixel_model, cfg, ckpt, architecture))
    return specs


def init_device(args: argparse.Namespace) -> torch.device:
    """Device and (under torchrun) the process group, via timm."""
    args.device = default_device(args.device)
    device = utils.init_distributed_device(args)
    if device.type == 'cpu':
        set_cpu_threads(args.threads)
    return device


def gather_rows(indices: List[int], *tensors: torch.Tensor) -> Tuple[List[int], List[torch.Tensor]]:
    """Concatenate per-rank per-sample results in dataset-index order (no-op without a process group).

    Each tensor has samples on its last dimension.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (list(indices), [t.cpu() for t in tensors]))
        indices = [i for p in parts for i in p[0]]
        tensors = [torch.cat([p[1][k] for p in parts], dim=-1) for k in range(len(tensors))]
    order = sorted(range(len(indices)), key=indices.__getitem__)
    index = torch.tensor(order, dtype=torch.long)
    return [indices[i] for i in order], [t.index_select(-1, index) for t in tensors]


def _sweep_state(args, spec: ModelSpec, rank: int, config, indices) -> Tuple[Optional[str], Dict[str, Any]]:
    """Where a finished PGD sweep is kept (None without --output) and what it must match to be reused."""
    key = {'checkpoint': spec.checkpoint, 'config': repr(config), 'indices': list(map(int, indices)), 'seed': args.seed}
    path = os.path.join(args.output, f'sweep_{spec.label}_rank{rank}.pt') if args.output else None
    return path, key


def _finished_sweep(args, spec: ModelSpec, rank: int, config, indices):
    """The PGD sweep of an earlier, interrupted run with the same model, settings and images, if any."""
    path, key = _sweep_state(args, spec, rank, config, indices)
    if not path or not os.path.exists(path):
        return None
    kept = torch.load(path, map_location='cpu', weights_only=False)
    if kept.get('key') != key:
        return None
    _logger.info(f'{spec.label}: resumed the PGD sweep finished in an earlier run ({path})')
    return kept['sweep']


def _keep_sweep(args, spec: ModelSpec, rank: int, config, indices, sweep) -> None:
    path, key = _sweep_state(args, spec, rank, config, indices)
    if path:
        atomic_save({'key': key, 'sweep': sweep}, path)


def evaluate_model(spec: ModelSpec, args: argparse.Namespace, device: torch.device, rank: int = 0, world: int = 1,
                   source: Optional[ModelSpec] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """One model's results (clean, the PGD sweep, AutoAttack, the checklist, the whole split's clean accuracy, as
    ``args`` asks) and its per-image flags; this process's share of the images under torchrun."""
    dataset = create_pixel_dataset(args.dataset, args.data_dir, args.split, spec.data_config)
    indices = select_indices(dataset, args.subset, args.num_samples, args.subset_seed)
    loader, mine = create_pixel_loader(dataset, indices, args.batch_size, args.workers, rank, world)
    show = not args.no_progress and rank == 0
    result: Dict[str, Any] = {'label': spec.label, 'checkpoint': spec.checkpoint, 'num_samples': len(indices),
                              'data_config': {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in spec.data_config.items()}}
    flags: Dict[str, Any] = {}
    torch.manual_seed(args.seed + rank)
    if not args.no_sweep:
        config = PGDSweepConfig(eps=args.eps, steps=args.steps, restarts=args.restarts, losses=args.losses,
                                norm=getattr(args, 'norm', 'Linf'),
                                step_size_factor=args.step_size_factor)
        sweep = _finished_sweep(args, spec, rank, config, indices)
        if sweep is None:
            sweep = pgd_sweep(spec.model, loader, config, device, show_progress=show, desc=f'{spec.label} PGD')
            _keep_sweep(args, spec, rank, config, indices, sweep)
        order, (clean, robust) = gather_rows(mine, sweep.clean, sweep.robust)
        result['clean_accuracy'] = 100.0 * clean.float().mean().item()
        result['sweep'] = {'eps': sweep.eps, 'accuracy': [100.0 * r.float().mean().item() for r in robust],
                           'steps': args.steps, 'losses': list(args.losses), 'restarts': args.restarts,
                           'norm': config.norm}
        flags.update(indices=order, clean=clean, sweep_robust=robust, sweep_eps=sweep.eps)
    if args.autoattack:
        x, y = load_batches(loader, device)
        runs = []
        for eps in args.aa_eps:
            tag = '' if len(args.aa_eps) == 1 else f'_eps{eps * 255:g}'  # the file name keeps its 255ths
            state = os.path.join(args.output, f'autoattack_{spec.label}{tag}_rank{rank}.json') if args.output else None
            norm = getattr(args, 'norm', 'Linf')
            aa = run_autoattack(spec.model, x, y, eps=eps, version=args.aa_version, norm=norm,
                                batch_size=args.aa_batch_size or args.batch_size, device=device, seed=args.seed,
                                state_path=state, show_progress=show, desc=f'{spec.label} AutoAttack {norm} {eps:g}')
            order, (clean, robust) = gather_rows(mine, aa.clean, aa.robust)
            result.setdefault('clean_accuracy', 100.0 * clean.float().mean().item())
            accuracy = 100.0 * robust.float().mean().item()
            runs.append({'eps': eps, 'norm': norm, 'version': args.aa_version, 'backend': aa.backend,
                         'robust_accuracy': accuracy,
                         'ci95': list(wilson_interval(accuracy, robust.numel())),
                         'after_each_attack': aa.per_attack if world == 1 else None})
            flags.update({'indices': order, 'aa_clean': clean, f'aa_robust{tag}': robust})
        result['autoattack'] = runs[0]  # the first ε; every ε in 'autoattack_by_eps' when several are given
        if len(runs) > 1:
            result['autoattack_by_eps'] = runs
    if args.sanity and rank == 0:
        sanity_idx = indices[:args.sanity_samples]
        sanity_loader, _ = create_pixel_loader(dataset, sanity_idx, args.batch_size, args.workers)
        x, y = load_batches(sanity_loader, device)
        ctx = SanityContext(spec.model, x, y, eps=args.sanity_eps or max(args.aa_eps), steps=args.sanity_steps,
                            tolerance=args.tolerance, source_model=source.model if source else None,
                            square_queries=args.square_queries, seed=args.seed)
        checks = run_sanity_checks(ctx, args.sanity_checks, show_progress=show, desc=f'{spec.label} checklist')
        result['sanity'] = {'eps': ctx.eps, 'num_samples': len(sanity_idx), 'verdict': masking_verdict(checks),
                            'checks': [c.as_dict() for c in checks]}
        _logger.info(f"{spec.label}: {result['sanity']['verdict']}")
    if 'clean_accuracy' not in result:
        x, y = load_batches(loader, device)
        with torch.no_grad():
            correct = spec.model(x).argmax(-1) == y
        result['clean_accuracy'] = 100.0 * gather_rows(mine, correct)[1][0].float().mean().item()
    if len(indices) < len(dataset) and world == 1 and not args.no_split_accuracy:  # the sample beside the split
        result['split'] = {'num_samples': len(dataset),
                           'clean_accuracy': _clean_accuracy(spec.model, dataset, args, device)}
    return result, flags


def _clean_accuracy(model, dataset, args, device) -> float:
    """Clean top-1 (%) of ``model`` on every image of ``dataset``, a batch at a time."""
    loader, _ = create_pixel_loader(dataset, list(range(len(dataset))), args.batch_size, args.workers)
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x.to(device)).argmax(-1).cpu() == y).sum().item()
    return 100.0 * correct / len(dataset)


class Evaluator:
    """Every model of ``args`` (gradreg-eval's options) evaluated as ``args`` asks; under torchrun each process
    takes its share of the images and rank 0 holds the gathered results."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = init_device(args)
        self.rank, self.world = getattr(args, 'rank', 0), getattr(args, 'world_size', 1)
        self.specs = resolve_models(args, self.device)
        self.source = None
        if args.source_checkpoint:
            model, cfg = load_eval_model(args.source_checkpoint, args.source_model)
            self.source = ModelSpec('source', normalized_model(model, cfg['mean'], cfg['std']).to(self.device).eval(),
                                    cfg, args.source_checkpoint)
        self.results: List[Dict[str, Any]] = []
        self.flags: Dict[str, Dict[str, Any]] = {}

    def run(self) -> List[Dict[str, Any]]:
        """Each model's results, in order (its per-image flags in ``self.flags`` by label)."""
        for spec in self.specs:
            result, flags = evaluate_model(spec, self.args, self.device, self.rank, self.world, self.source)
            self.results.append(result)
            self.flags[spec.label] = flags
        return self.results

    def write(self, output: str) -> List[str]:
        """results.json (with the options), report.md, per-image flags and, with a sweep, sweep.csv and the
        accuracy-vs-ε plot; the names written."""
        config = {k: v for k, v in vars(self.args).items() if k not in ('rank', 'world_size', 'local_rank')}
        os.makedirs(output, exist_ok=True)
        write_json(os.path.join(output, 'results.json'), {'config': config, 'models': self.results})
        for label, flags in self.flags.items():
            torch.save(flags, os.path.join(output, f'flags_{label}.pt'))
        swept = [r for r in self.results if 'sweep' in r]
        if swept:
            write_sweep_csv(os.path.join(output, 'sweep.csv'), swept)
            try:
                plot_robust_curves(os.path.join(output, 'robust_curve.png'), swept)
            except ImportError:
                _logger.warning('matplotlib is not installed: no robust_curve.png (pip install "timm-gradreg[eval]")')
        with open(os.path.join(output, 'report.md'), 'w') as f:
            f.write(markdown_report(self.results, config))
        names = ['results.json', 'report.md', 'sweep.csv', 'robust_curve.png']
        for spec, result in zip(self.specs, self.results):
            info = robustbench_model_info(result, config, spec.architecture)
            if info is not None:
                names.append(f'robustbench_{spec.label}.json')
                write_json(os.path.join(output, names[-1]), info)
        return [n for n in names if os.path.exists(os.path.join(output, n))] + [f'flags_{k}.pt' for k in self.flags]

    def close(self) -> None:
        """End the process group (under torchrun)."""
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
