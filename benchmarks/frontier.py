"""The cost–robustness frontier: every method trained on the digits demo, attacked, and timed against PGD-3.

    python benchmarks/frontier.py                       # all methods, seeds 0 1 2 -> docs/frontier/
    python benchmarks/frontier.py --methods gradnorm pgd --seeds 0
    python benchmarks/frontier.py --quick --output /tmp/frontier   # a smoke test: 1 seed, 2 epochs

Each method trains with timm-train from the demo recipes (same model, schedule and ε 24/255; seeds
0/1/2; the FGSM step of fgsm and gradalign warmed up over 5 epochs as PGD-3's), is evaluated by
gradreg-eval on the last checkpoint (AutoAttack standard and PGD-50 at 24/255), and has a
training step timed against PGD-3 by benchmarks/step_cost.py in one interleaved run, on the demo
model and on resnet50-GELU at 128 px, batch 16. Writes frontier.json, frontier.md
and frontier.png. Resumable: a run whose checkpoint or evaluation exists is not redone.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = '24/255'

#: name -> (recipe, timm-train options over it, step_cost.py method name)
METHODS: Dict[str, tuple] = {
    'natural': ('demo/digits_natural', [], 'natural'),
    'pgd': ('demo/digits_advtrain', [], 'pgd-3'),
    'fgsm': ('demo/digits_advtrain', ['--gradreg', 'fgsm'], 'fgsm'),
    'gradnorm': ('demo/digits_gradnorm', [], 'gradnorm'),
    'gradnorm-fd': ('demo/digits_gradnorm', ['--gradnorm-impl', 'fd'], 'gradnorm-fd'),
    'gradnorm-rho50': ('demo/digits_gradnorm', ['--gn-penalty-fraction', '0.5'], 'gradnorm-rho50'),
    'gradnorm-every2': ('demo/digits_gradnorm', ['--gn-every', '2'], 'gradnorm-every2'),
    'gradnorm-every4': ('demo/digits_gradnorm', ['--gn-every', '4'], 'gradnorm-every4'),
    'gradnorm-res50': ('demo/digits_gradnorm', ['--gn-resolution', '0.5'], 'gradnorm-res50'),
    'trades': ('demo/digits_natural', ['--gradreg', 'trades', '--trades-eps', EPS], 'trades'),
    # the authors' SVHN λ (l2dbl 10^4 at batch 256) at its per-sample strength for the demo's batch 64
    'igr': ('demo/digits_natural', ['--gradreg', 'igr', '--igr-weight', '2500'], 'igr'),
    'gradalign': ('demo/digits_natural', ['--gradreg', 'gradalign', '--gradalign-eps', EPS,
                                          '--gradalign-warmup-epochs', '5'], 'gradalign'),
    'cure': ('demo/digits_natural', ['--gradreg', 'cure'], 'cure'),
}
#: The step-cost settings: the target is judged on resnet50-GELU (the demo model is dominated by
#: per-kernel overheads).
COST_SETTINGS = {
    'resnet50': ['--model', 'resnet50', '--act', 'gelu', '--img-size', '128', '-b', '16', '--num-classes', '10'],
    'demo': ['--model', 'test_resnet', '--act', 'gelu', '--img-size', '32', '-b', '64', '--num-classes', '10'],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--output', default=os.path.join(ROOT, 'docs', 'frontier'))
    parser.add_argument('--work', default=None, help='runs and evaluations (default: OUTPUT/work)')
    parser.add_argument('--aa-samples', type=int, default=None, help='AutoAttack/PGD samples (default: all 359)')
    parser.add_argument('--cost', nargs='*', default=list(COST_SETTINGS), choices=list(COST_SETTINGS),
                        help='step-cost settings to time (none: skip timing)')
    parser.add_argument('--cost-steps', type=int, default=5, help='timed rounds per method (5)')
    parser.add_argument('--quick', action='store_true', help='1 seed, 2 epochs, 16 samples, demo cost only')
    parser.add_argument('--update', action='store_true',
                        help='replace the methods run in an existing OUTPUT/frontier.json and keep the others')
    return parser


def run(cmd: List[str], log: str) -> None:
    print('$ ' + ' '.join(cmd), flush=True)
    with open(log, 'w') as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        tail = open(log).read()[-2000:]
        raise SystemExit(f'failed ({code}): {" ".join(cmd)}\n{tail}')


def train(name: str, seed: int, work: str, quick: bool) -> str:
    recipe, extra, _ = METHODS[name]
    experiment = f'{name}-s{seed}'
    folder = os.path.join(work, 'runs', experiment)
    checkpoint = os.path.join(folder, 'last.pth.tar')
    if os.path.exists(checkpoint) and os.path.exists(os.path.join(folder, 'done')):
        return checkpoint
    cmd = [sys.executable, '-m', 'timm_gradreg.cli.train', '-c', recipe, *extra, '--seed', str(seed),
           '--output', os.path.join(work, 'runs'), '--experiment', experiment, '--eval-metric', 'top1',
           '--adv-val-steps', '0', '--workers', '0', '--checkpoint-hist', '1']
    if quick:
        cmd += ['--epochs', '2', '--warmup-epochs', '0', '--gn-warmup-epochs', '0', '--attack-warmup-epochs', '0']
    os.makedirs(folder, exist_ok=True)
    run(cmd, os.path.join(work, 'runs', f'{experiment}.log'))
    open(os.path.join(folder, 'done'), 'w').close()
    return checkpoint


def evaluate(name: str, seed: int, checkpoint: str, work: str, samples: Optional[int], quick: bool) -> dict:
    folder = os.path.join(work, 'eval', f'{name}-s{seed}')
    results = os.path.join(folder, 'results.json')
    if not os.path.exists(results):
        cmd = [sys.executable, '-m', 'timm_gradreg.cli.evaluate', '--checkpoint', checkpoint, '--dataset',
               'demo/digits', '--eps', '0', EPS, '--steps', '5' if quick else '50', '--autoattack', '--aa-eps', EPS,
               '--output', folder, '--no-progress', '--workers', '0', '--labels', name]
        if samples:
            cmd += ['--num-samples', str(samples)]
        os.makedirs(work, exist_ok=True)
        run(cmd, os.path.join(work, 'eval', f'{name}-s{seed}.log'))
    model = json.load(open(results))['models'][0]
    return {'clean': model['clean_accuracy'], 'pgd50': model['sweep']['accuracy'][-1],
            'autoattack': model['autoattack']['robust_accuracy'], 'num_samples': model['num_samples']}


def time_steps(setting: str, methods: List[str], work: str, steps: int) -> Dict[str, dict]:
    path = os.path.join(work, f'cost_{setting}.json')
    if not os.path.exists(path):
        bench = sorted({METHODS[m][2] for m in methods} | {'pgd-3'})
        cmd = [sys.executable, os.path.join(ROOT, 'benchmarks', 'step_cost.py'), *COST_SETTINGS[setting],
               '--methods', *bench, '--steps', str(steps), '--warmup', '1', '--max-warmup', '3', '--no-memory',
               '--no-fd-check', '--output', path]
        run(cmd, os.path.join(work, f'cost_{setting}.log'))
    rows = {r['method']: r for r in json.load(open(path))['rows'] if not r.get('compiled')}
    return {m: {'ratio': rows[METHODS[m][2]]['ratio'], 'passes': rows[METHODS[m][2]]['passes']} for m in methods}


def summarize(values: List[float]) -> dict:
    return {'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'values': values}


def pareto(points: Dict[str, tuple]) -> List[str]:
    """Names on the front: no other point is at most as costly and strictly more robust."""
    front = [n for n, (c, a) in points.items()
             if not any(c2 <= c and a2 > a or c2 < c and a2 >= a for m, (c2, a2) in points.items() if m != n)]
    return sorted(front, key=lambda n: points[n][0])


def markdown(data: dict) -> str:
    at = data['methods'].get('pgd', {}).get('autoattack', {}).get('mean')
    lines = ['# Cost–robustness frontier (digits demo, ε 24/255)', '',
             f"Seeds {data['seeds']}; {data['num_samples']} validation digits; AutoAttack standard and PGD-50 on the "
             'last checkpoint; cost: a training step relative to PGD-3 in one interleaved run (resnet50-GELU 128 px '
             'batch 16, and the demo model), on ' + data['device'] + '.', '',
             f"| method | clean | PGD-{data['pgd_steps']} | AutoAttack | % of AT | cost (resnet50) | cost (demo) | passes |",
             '|---|---|---|---|---|---|---|---|']
    for name, m in sorted(data['methods'].items(), key=lambda kv: kv[1].get('cost_ratio') or 0):
        def ms(key):
            return f"{m[key]['mean']:.2f} ± {m[key]['std']:.2f}"
        share = f"{100 * m['autoattack']['mean'] / at:.0f}%" if at else '—'
        cost = f"{m['cost_ratio']:.2f}" if m.get('cost_ratio') is not None else '—'
        demo = f"{m['cost_ratio_demo']:.2f}" if m.get('cost_ratio_demo') is not None else '—'
        lines.append(f"| {name} | {ms('clean')} | {ms('pgd50')} | {ms('autoattack')} | {share} | {cost} | {demo} | "
                     f"{m.get('passes', '—')} |")
    lines += ['', f"Pareto front (AutoAttack vs {data['cost_setting']} cost): {', '.join(data['pareto']) or '—'}.", '',
              f"Target, ≥ 90% of AT's AutoAttack at ≤ 0.5× its step cost: {data['target'] or 'no method reaches it'}.",
              '']
    return '\n'.join(lines)


def plot(data: dict, path: str) -> None:
    """AutoAttack vs cost, whole range on the left and the cheap, robust corner enlarged on the right."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    key = 'cost_ratio' if data['cost_setting'] == 'resnet50' else 'cost_ratio_demo'
    points = {n: (m[key], m['autoattack']['mean']) for n, m in data['methods'].items() if m.get(key) is not None}
    at = data['methods'].get('pgd', {}).get('autoattack', {}).get('mean')
    front = [points[n] for n in data['pareto'] if n in points]
    corner = {n for n, (cost, acc) in points.items() if cost <= 1.05 and at and acc >= 0.7 * at}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, zoom in zip(axes, (False, True)):
        shown = {n: p for n, p in points.items() if not zoom or n in corner}
        for rank, (name, (cost, acc)) in enumerate(sorted(shown.items(), key=lambda kv: kv[1][1])):
            ax.errorbar(cost, acc, yerr=data['methods'][name]['autoattack']['std'], fmt='o', capsize=3)
            if zoom or name not in corner:  # the crowded corner is labelled on the right
                ax.annotate(name, (cost, acc), textcoords='offset points', fontsize=8,
                            xytext=(6, -10 if zoom and rank % 2 else 4))
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], 'k--', lw=1, label='Pareto front')
        if at:
            ax.axhline(0.9 * at, color='grey', lw=0.8, ls=':', label='90% of PGD-3 AT')
            ax.axvline(0.5, color='grey', lw=0.8, ls='-.', label='0.5× PGD-3 cost')
        if zoom and shown:
            costs, accs = [p[0] for p in shown.values()], [p[1] for p in shown.values()]
            ax.set_xlim(min(costs) - 0.05, max(costs) + 0.1)
            ax.set_ylim(min(accs) - 8, max(accs) + 4)
        ax.set_xlabel('training-step cost relative to PGD-3 (' + ('resnet50-GELU, 128 px, batch 16)'
                      if key == 'cost_ratio' else 'the demo model)'))
        ax.set_title('enlarged: cost ≤ 1, ≥ 70% of AT' if zoom else 'all methods')
    axes[0].set_ylabel(f'AutoAttack accuracy at ε {EPS} (%), mean ± std over seeds')
    axes[0].legend(fontsize=8, loc='lower right')
    fig.suptitle('Cost–robustness frontier on the digits demo')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.seeds, args.aa_samples, args.cost, args.cost_steps = args.seeds[:1], args.aa_samples or 16, ['demo'], 1
    work = args.work or os.path.join(args.output, 'work')
    os.makedirs(os.path.join(work, 'eval'), exist_ok=True)
    scores: Dict[str, List[dict]] = {}
    for name in args.methods:
        for seed in args.seeds:
            checkpoint = train(name, seed, work, args.quick)
            scores.setdefault(name, []).append(evaluate(name, seed, checkpoint, work, args.aa_samples, args.quick))
    costs = {setting: time_steps(setting, args.methods, work, args.cost_steps) for setting in args.cost}
    import torch
    data = {'seeds': args.seeds, 'eps': EPS, 'pgd_steps': 5 if args.quick else 50, 'num_samples': scores[args.methods[0]][0]['num_samples'],
            'device': f"{os.cpu_count()}-core CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
            'methods': {}}
    for name, runs in scores.items():
        entry = {key: summarize([r[key] for r in runs]) for key in ('clean', 'pgd50', 'autoattack')}
        for setting, key in (('resnet50', 'cost_ratio'), ('demo', 'cost_ratio_demo')):
            entry[key] = costs[setting][name]['ratio'] if setting in costs else None
        entry['passes'] = next((c[name]['passes'] for c in costs.values()), None)
        data['methods'][name] = entry
    previous = os.path.join(args.output, 'frontier.json')
    if args.update and os.path.exists(previous):
        kept = json.load(open(previous))['methods']
        data['methods'] = {**{n: m for n, m in kept.items() if n not in data['methods']}, **data['methods']}
    key = 'cost_ratio' if 'resnet50' in costs else 'cost_ratio_demo'
    data['cost_setting'] = 'resnet50' if key == 'cost_ratio' else 'demo'
    points = {n: (m[key], m['autoattack']['mean']) for n, m in data['methods'].items() if m.get(key) is not None}
    data['pareto'] = pareto(points)
    at = data['methods'].get('pgd', {}).get('autoattack', {}).get('mean')
    data['target'] = ', '.join(n for n, (c, a) in points.items() if at and a >= 0.9 * at and c <= 0.5)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, 'frontier.json'), 'w') as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(args.output, 'frontier.md'), 'w') as f:
        f.write(markdown(data))
    if points:
        plot(data, os.path.join(args.output, 'frontier.png'))
    print(markdown(data))
    return 0


if __name__ == '__main__':
    sys.exit(main())
