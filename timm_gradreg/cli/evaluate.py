"""gradreg-eval: robustness of timm checkpoints the way the field measures it.

Clean top-1, a PGD sweep over ε (CE and DLR losses, restarts, worst case per sample),
AutoAttack 'standard' at one ε, and the gradient-masking checklist of Carlini et al.;
tables (JSON, CSV, markdown) and the accuracy-vs-ε plot, one line per model.
"""
import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import yaml

from ..core.attacks import PGD_STEP_FACTOR
from ..core.normalization import normalized_model
from ..evaluate import (DEFAULT_SWEEP_EPS, PGDSweepConfig, SanityContext, create_pixel_dataset, create_pixel_loader,
                        list_checks, load_batches, markdown_report, masking_verdict, pgd_sweep, plot_robust_curves,
                        run_autoattack, run_sanity_checks, select_indices, write_json, write_sweep_csv)
from ..evaluate.interval import format_accuracy, wilson_interval
from ..models.loading import ModelError, load_eval_model
from ..tasks import attack_count, attack_radius, number, pixel_amount
from ..utils.files import OutputPathError, atomic_save, check_output_path
from ..utils.parser import ArgumentParser
from ..utils.yaml_config import parse_with_config
from .common import ModelSpec, add_data_args, add_model_args, gather_rows, init_device, resolve_models
from .console import command, setup_console_logging

_logger = logging.getLogger('timm_gradreg.eval')


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
    group = parser.add_argument_group('PGD sweep')
    group.add_argument('--eps', type=pixel_amount, nargs='+', default=list(DEFAULT_SWEEP_EPS), metavar='EPS',
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
    group.add_argument('--aa-eps', type=attack_radius, nargs='+', default=[4 / 255], metavar='EPS',
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


def _evaluate_model(spec: ModelSpec, args, device, rank: int, world: int, source: Optional[ModelSpec]):
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
                                step_size_factor=args.step_size_factor)
        sweep = _finished_sweep(args, spec, rank, config, indices)
        if sweep is None:
            sweep = pgd_sweep(spec.model, loader, config, device, show_progress=show, desc=f'{spec.label} PGD')
            _keep_sweep(args, spec, rank, config, indices, sweep)
        order, (clean, robust) = gather_rows(mine, sweep.clean, sweep.robust)
        result['clean_accuracy'] = 100.0 * clean.float().mean().item()
        result['sweep'] = {'eps': sweep.eps, 'accuracy': [100.0 * r.float().mean().item() for r in robust],
                           'steps': args.steps, 'losses': list(args.losses), 'restarts': args.restarts}
        flags.update(indices=order, clean=clean, sweep_robust=robust, sweep_eps=sweep.eps)
    if args.autoattack:
        x, y = load_batches(loader, device)
        runs = []
        for eps in args.aa_eps:
            tag = '' if len(args.aa_eps) == 1 else f'_eps{eps * 255:g}'
            state = os.path.join(args.output, f'autoattack_{spec.label}{tag}_rank{rank}.json') if args.output else None
            aa = run_autoattack(spec.model, x, y, eps=eps, version=args.aa_version,
                                batch_size=args.aa_batch_size or args.batch_size, device=device, seed=args.seed,
                                state_path=state, show_progress=show, desc=f'{spec.label} AutoAttack {eps * 255:g}/255')
            order, (clean, robust) = gather_rows(mine, aa.clean, aa.robust)
            result.setdefault('clean_accuracy', 100.0 * clean.float().mean().item())
            accuracy = 100.0 * robust.float().mean().item()
            runs.append({'eps': eps, 'version': args.aa_version, 'backend': aa.backend, 'robust_accuracy': accuracy,
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


def _print_summary(models: List[Dict[str, Any]]) -> None:
    """Per model: clean, the PGD sweep (ε in /255: accuracy), AutoAttack with its 95% interval, the checklist."""
    print(f"Summary, {models[0]['num_samples']} samples per model (95% Wilson intervals):")
    for m in models:
        n = m['num_samples']
        parts = [f"{m['label']}: clean {format_accuracy(m['clean_accuracy'], n)}"]
        if 'split' in m:
            parts[0] += f" (whole split: {m['split']['clean_accuracy']:.1f}% of {m['split']['num_samples']})"
        if 'sweep' in m:
            parts.append('PGD ' + ' '.join(f'{e * 255:g}:{a:.1f}' for e, a in zip(m['sweep']['eps'],
                                                                                m['sweep']['accuracy'])))
        for aa in m.get('autoattack_by_eps') or ([m['autoattack']] if 'autoattack' in m else []):
            parts.append(f"AutoAttack {aa['eps'] * 255:g}/255 {format_accuracy(aa['robust_accuracy'], n)}")
        if 'sanity' in m:
            parts.append(m['sanity']['verdict'])
        print('  ' + ' | '.join(parts))


@command('gradreg-eval', 'rerun the same command with the same --output to resume (finished PGD sweeps and '
                         "AutoAttack's finished attacks are kept)")
def main(argv: Optional[List[str]] = None) -> int:
    setup_console_logging()
    parser = build_parser()
    args, _ = parse_with_config(parser, argv)
    if args.dry_run:
        print(yaml.safe_dump(vars(args), sort_keys=False), end='')
        return 0
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
    try:
        device = init_device(args)
        rank, world = args.rank, args.world_size
        specs = resolve_models(args, device)
        source = None
        if args.source_checkpoint:
            model, cfg = load_eval_model(args.source_checkpoint, args.source_model)
            source = ModelSpec('source', normalized_model(model, cfg['mean'], cfg['std']).to(device).eval(), cfg,
                               args.source_checkpoint)
        results, all_flags = [], {}
        for spec in specs:
            result, flags = _evaluate_model(spec, args, device, rank, world, source)
            results.append(result)
            all_flags[spec.label] = flags
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
    if rank == 0:
        _print_summary(results)
        if args.output:
            config = {k: v for k, v in vars(args).items() if k not in ('rank', 'world_size', 'local_rank')}
            write_json(os.path.join(args.output, 'results.json'), {'config': config, 'models': results})
            for label, flags in all_flags.items():
                torch.save(flags, os.path.join(args.output, f'flags_{label}.pt'))
            swept = [r for r in results if 'sweep' in r]
            if swept:
                write_sweep_csv(os.path.join(args.output, 'sweep.csv'), swept)
                plot_robust_curves(os.path.join(args.output, 'robust_curve.png'), swept)
            with open(os.path.join(args.output, 'report.md'), 'w') as f:
                f.write(markdown_report(results, config))
            written = ['results.json', 'report.md', 'sweep.csv', 'robust_curve.png']
            print(f"Wrote to {os.path.abspath(args.output)}: "
                  f"{', '.join(f for f in written if os.path.exists(os.path.join(args.output, f)))}, flags_*.pt")
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
