"""gradreg-analyze: the paper's characterization of input gradients, for models side by side.

Table 1 (E||g||₁, overall and given PGD-10 fails/succeeds), Table 5 (log-correlation of
saliency and |g| with image edges), Table 6 (||g||₂, Hessian spectral norm, normalized
curvature), Table 7 (local linearity error), and figures 1/3 (gradients and PGD
perturbations as images), 6/7 (gradient-norm and per-channel histograms) and 11 (loss,
||g||₁ and curvature along the PGD direction).
"""
import argparse
import csv
import logging
import os
import sys
from typing import Any, Dict, List, Optional

from ..analyze import AnalysisConfig, analyze_model, channel_histograms, gradient_grid, gradnorm_histograms, path_figure
from ..evaluate import create_pixel_dataset, create_pixel_loader, load_batches, select_indices, write_json
from ..models.loading import ModelError
from ..core.values import attack_count, attack_radius, number
from ..utils.parser import ArgumentParser
from ..evaluate.pipeline import init_device, resolve_models
from .common import add_data_args, add_model_args
from .console import command, setup_console_logging

_logger = logging.getLogger('timm_gradreg.analyze')


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog='gradreg-analyze',
        description='Characterize the loss-input gradients of timm models (w.r.t. [0, 1] pixels, normalization '
                    'inside the model): gradient norms and their relation to robustness, alignment with image '
                    'edges, curvature, local linearity; JSON/CSV/markdown tables and PNG figures.',
        epilog='Example: gradreg-analyze --checkpoint output/demo/digits_*/last.pth.tar --dataset demo/digits '
               '--eps 24/255 --output output/analysis')
    add_model_args(parser)
    add_data_args(parser, default_samples=64)
    group = parser.add_argument_group('Analysis')
    group.add_argument('--eps', type=attack_radius, default=4 / 255, metavar='EPS',
                       help='PGD radius for Table 1 and the perturbation images (4/255)')
    group.add_argument('--pgd-steps', type=attack_count, default=10, help='PGD steps of Table 1 (10)')
    group.add_argument('--power-iters', type=number(1, integer=True), default=20,
                       help='power iterations for ||H||₂ (20)')
    group.add_argument('--linearity-eps', type=attack_radius, default=None, metavar='EPS',
                       help='η range of the local linearity error (default: --eps)')
    group.add_argument('--linearity-draws', type=number(1, integer=True), default=8,
                       help='random (α, η₁, η₂) per image (8)')
    group.add_argument('--path-points', type=number(2, integer=True), default=11,
                       help='points along the PGD-5 direction (11)')
    group.add_argument('--path-power-iters', type=number(1, integer=True), default=10,
                       help='power iterations per path point (10)')
    group.add_argument('--grid-images', type=number(1, integer=True), default=8,
                       help='images in the gradient grid figure (8)')
    return parser


def _write_tables(output: str, results: Dict[str, Dict[str, Any]]) -> None:
    with open(os.path.join(output, 'tables.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['model', 'table', 'row', 'statistic', 'value'])
        for label, r in results.items():
            for table, content in r['tables'].items():
                if table == 'fig11_path' or not isinstance(content, dict):
                    writer.writerow([label, table, '', 'value', content])
                    continue
                for row, values in content.items():
                    if isinstance(values, dict):
                        for stat, value in values.items():
                            writer.writerow([label, table, row, stat, value])
                    else:
                        writer.writerow([label, table, '', row, values])


def _markdown(results: Dict[str, Dict[str, Any]], config: AnalysisConfig, n: int) -> str:
    def fmt(v):
        return f'{v:.4g}' if isinstance(v, float) else str(v)

    def ms(d):
        return f"{fmt(d['mean'])} ± {fmt(d['std'])}"

    labels = list(results)
    t = {k: r['tables'] for k, r in results.items()}
    lines = ['# Input-gradient analysis', '',
             f'{n} images per model; gradients w.r.t. [0, 1] pixels; PGD-{config.pgd_steps} at ε = '
             f'{config.eps * 255:g}/255.', '',
             '## Table 1: E||∇ₓ loss||₁', '',
             'Mean given PGD fails / succeeds, then over all images with the median beside it: the images where '
             'PGD succeeds have large gradients and dominate the overall mean, so compare models by the '
             'conditional columns or the median.', '',
             '| model | clean | PGD acc | PGD fails | PGD succeeds | all: mean | all: median |',
             '|---|---|---|---|---|---|---|']
    for k in labels:
        g = t[k]['table1_grad_l1']
        lines.append(f"| {k} | {t[k]['clean_accuracy']:.2f} | {t[k]['pgd_accuracy']:.2f} "
                     f"| {fmt(g['pgd_fails']['mean'])} (n={g['pgd_fails']['n']}) | {fmt(g['pgd_succeeds']['mean'])} "
                     f"(n={g['pgd_succeeds']['n']}) | {fmt(g['all']['mean'])} | {fmt(g['all']['median'])} |")
    lines += ['', '## Table 5: Pearson correlation with log oriented edge energy (mean ± std over images)', '',
              '| model | log saliency (max_c |∇ₓ f_y|) | log |∇ₓ loss| |', '|---|---|---|']
    for k in labels:
        e = t[k]['table5_edge_correlation']
        lines.append(f"| {k} | {ms(e['saliency'])} | {ms(e['loss_gradient'])} |")
    lines += ['', '## Table 6: curvature', '', '| model | ||g||₂ | ||H||₂ | ||H||₂ / ||g||₂ (mean) | (median) |',
              '|---|---|---|---|---|']
    for k in labels:
        c = t[k]['table6_curvature']
        lines.append(f"| {k} | {fmt(c['grad_l2']['mean'])} | {fmt(c['hessian_norm']['mean'])} | "
                     f"{fmt(c['normalized_curvature']['mean'])} | {fmt(c['normalized_curvature']['median'])} |")
    lines += ['', f'## Table 7: local linearity error (η ~ U(±{config.linearity_eps * 255:g}/255))', '',
              '| model | mean | std | log10 mean | log10 median |', '|---|---|---|---|---|']
    for k in labels:
        lle = t[k]['table7_local_linearity']
        lines.append(f"| {k} | {fmt(lle['mean'])} | {fmt(lle['std'])} | {fmt(lle['log10_mean'])} | "
                     f"{fmt(lle['log10_median'])} |")
    lines += ['', 'Figures: gradients_grid.png (Fig. 1/3), gradnorm_hist.png (Fig. 6), channel_hist.png (Fig. 7), '
                  'path_profile.png (Fig. 11).', '']
    return '\n'.join(lines)


@command('gradreg-analyze')
def main(argv: Optional[List[str]] = None) -> int:
    setup_console_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    output = args.output or 'output/analysis'
    config = AnalysisConfig(eps=args.eps, pgd_steps=args.pgd_steps,
                            path_ts=tuple(i / max(args.path_points - 1, 1) for i in range(args.path_points)),
                            power_iters=args.power_iters, path_power_iters=args.path_power_iters,
                            linearity_eps=args.linearity_eps or args.eps, linearity_draws=args.linearity_draws,
                            seed=args.seed)
    try:
        device = init_device(args)
        specs = resolve_models(args, device)
        results: Dict[str, Dict[str, Any]] = {}
        images = None
        for spec in specs:
            dataset = create_pixel_dataset(args.dataset, args.data_dir, args.split, spec.data_config)
            indices = select_indices(dataset, args.subset, args.num_samples, args.subset_seed)
            loader, _ = create_pixel_loader(dataset, indices, args.batch_size, args.workers)
            x, y = load_batches(loader, device)
            images = x.cpu() if images is None else images
            _logger.info(f'Analysing {spec.label} on {x.shape[0]} images ...')
            results[spec.label] = analyze_model(spec.model, x, y, config, show_progress=not args.no_progress,
                                                desc=f'{spec.label} analysis')
    except (ModelError, ValueError, FileNotFoundError) as e:
        print(f'gradreg-analyze: error: {e}', file=sys.stderr)
        return 2
    os.makedirs(output, exist_ok=True)
    write_json(os.path.join(output, 'analysis.json'),
               {'config': {**vars(args), 'analysis': {k: getattr(config, k) for k in config.__dataclass_fields__}},
                'models': {k: r['tables'] for k, r in results.items()}})
    _write_tables(output, results)
    markdown = _markdown(results, config, images.shape[0])
    with open(os.path.join(output, 'analysis.md'), 'w') as f:
        f.write(markdown)
    try:
        gradient_grid(os.path.join(output, 'gradients_grid.png'), images, results, args.eps, args.grid_images)
        gradnorm_histograms(os.path.join(output, 'gradnorm_hist.png'), results)
        channel_histograms(os.path.join(output, 'channel_hist.png'), results)
        path_figure(os.path.join(output, 'path_profile.png'), results)
    except ImportError:
        _logger.warning('matplotlib is not installed: the tables are written, the figures are not '
                        '(pip install "timm-gradreg[eval]")')
    print(markdown)
    files = ['analysis.json', 'tables.csv', 'analysis.md', 'gradients_grid.png', 'gradnorm_hist.png',
             'channel_hist.png', 'path_profile.png']
    print(f"Wrote to {os.path.abspath(output)}: {', '.join(f for f in files if os.path.exists(os.path.join(output, f)))}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
