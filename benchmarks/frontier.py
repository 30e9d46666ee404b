"""The cost–robustness frontier: every method trained on a benchmark, attacked, and timed against PGD-3.

    python benchmarks/frontier.py                                  # digits, all methods -> docs/frontier/
    python benchmarks/frontier.py --dataset fashion_mnist          # Fashion-MNIST (Debian's idx files)
    python benchmarks/frontier.py --methods gradnorm pgd --seeds 0
    python benchmarks/frontier.py --quick --output /tmp/frontier   # a smoke test: 1 seed, 2 epochs

Each method trains with timm-train from the benchmark's recipes (same model, schedule and ε; the FGSM
step of fgsm and gradalign warmed up as PGD-3's), is evaluated by gradreg-eval on the last checkpoint
(AutoAttack standard and PGD-50 at ε, on a seeded subset of the test split), and has a training step
timed against PGD-3 by benchmarks/step_cost.py in one interleaved run, on the demo model and on
resnet50-GELU at 128 px, batch 16. Methods within 5 points of 90% of AT's AutoAttack accuracy (and AT
itself) get the benchmark's larger sample and more seeds. Each method's AutoAttack ratio to AT has a
95% bootstrap interval over seeds and images, and the target (≥ 90% of AT at ≤ 0.5× its step cost) is
decided with it. Writes frontier.json (a level per dataset), frontier.md and frontier.png (a panel per
dataset). Resumable: a run whose checkpoint or evaluation exists is not redone; --cost with no setting
skips the timing, so two processes can share the training (one thread each) and a third times and merges.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the cost package beside this script
from cost.methods import METHODS as ALL_METHODS, REFERENCE, BenchMethod  # noqa: E402
from timm_gradreg.tasks import task_options  # noqa: E402
from timm_gradreg.train import parse_args  # noqa: E402


@dataclass(frozen=True)
class Benchmark:
    """A dataset of the frontier: its recipes, ε, evaluation sample and seeds."""
    title: str
    eps: str
    recipes: Dict[str, str]  # natural / gradnorm / advtrain -> recipe
    eval_dataset: str
    samples: int  # AutoAttack and PGD-50 images of most methods (None: the whole split)
    samples_near: int  # ... of AT and of the methods within 5 points of the target
    seeds: Tuple[int, ...]
    seeds_near: Tuple[int, ...]
    igr_weight: str  # the authors' SVHN λ (l2dbl 10^4 at batch 256) at its per-sample strength: 39·batch


BENCHMARKS: Dict[str, Benchmark] = {
    'digits': Benchmark('digits demo', '24/255',
                        {k: f'demo/digits_{k}' for k in ('natural', 'gradnorm', 'advtrain')}, 'demo/digits',
                        100, 100, (0, 1, 2), (0, 1, 2), '2500'),
    'fashion_mnist': Benchmark('Fashion-MNIST', '0.1', {k: f'fmnist/{k}' for k in ('natural', 'gradnorm', 'advtrain')},
                               'fashion_mnist', 500, 1000, (0, 1, 2), (0, 1, 2, 3, 4), '5000'),
}

#: The frontier's methods: those of the benchmarks with a base recipe (benchmarks/cost/methods.py).
METHODS: Dict[str, BenchMethod] = {name: m for name, m in ALL_METHODS.items() if m.recipe}
#: The step-cost settings: the target is judged on resnet50-GELU (the demo model is dominated by
#: per-kernel overheads).
COST_SETTINGS = {
    'resnet50': ['--model', 'resnet50', '--act', 'gelu', '--img-size', '128', '-b', '16', '--num-classes', '10'],
    'demo': ['--model', 'test_resnet', '--act', 'gelu', '--img-size', '32', '-b', '64', '--num-classes', '10'],
}
TARGET_SHARE, TARGET_COST, NEAR_POINTS = 0.9, 0.5, 5.0
#: untimed rounds at most before timing on CPU, until no step faults in fresh pages
MAX_WARMUP_ROUNDS = 6


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', default='digits', choices=list(BENCHMARKS))
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--seeds', nargs='+', type=int, default=None, help='(default: the benchmark\'s)')
    parser.add_argument('--output', default=os.path.join(ROOT, 'docs', 'frontier'))
    parser.add_argument('--work', default=None, help='runs and evaluations (default: OUTPUT/work/DATASET)')
    parser.add_argument('--aa-samples', type=int, default=None,
                        help="AutoAttack/PGD samples (default: the benchmark's)")
    parser.add_argument('--cost', nargs='*', default=list(COST_SETTINGS), choices=list(COST_SETTINGS),
                        help='step-cost settings to time (none: skip timing)')
    parser.add_argument('--cost-steps', type=int, default=5, help='timed rounds per method (5)')
    parser.add_argument('--no-near', action='store_true', help='skip the larger sample and extra seeds near the target')
    parser.add_argument('--quick', action='store_true', help='1 seed, 2 epochs, 16 samples, demo cost only')
    parser.add_argument('--evaluated-only', action='store_true',
                        help='use the runs whose evaluation is there and train none (a study in progress); the '
                             'missing runs are listed in frontier.json and .md')
    parser.add_argument('--update', action='store_true',
                        help="replace the methods run in OUTPUT/frontier.json's dataset and keep the others")
    return parser


def run(cmd: List[str], log: str) -> None:
    print('$ ' + ' '.join(cmd), flush=True)
    with open(log, 'w') as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        tail = open(log).read()[-2000:]
        raise SystemExit(f'failed ({code}): {" ".join(cmd)}\n{tail}')


def train(bench: Benchmark, name: str, seed: int, work: str, quick: bool) -> str:
    method = METHODS[name]
    options = [a.format(eps=bench.eps, igr=bench.igr_weight) for a in method.timm_train_flags()]
    experiment = f'{name}-s{seed}'
    folder = os.path.join(work, 'runs', experiment)
    checkpoint = os.path.join(folder, 'last.pth.tar')
    if os.path.exists(checkpoint) and os.path.exists(os.path.join(folder, 'done')):
        return checkpoint
    cmd = [sys.executable, '-m', 'timm_gradreg.cli.train', '-c', bench.recipes[method.recipe], *options,
           '--seed', str(seed), '--output', os.path.join(work, 'runs'), '--experiment', experiment,
           '--eval-metric', 'top1', '--adv-val-steps', '0', '--workers', '0', '--checkpoint-hist', '1']
    if quick:  # two epochs, no warm-up (the method's own warm-up options only: others would be refused)
        gradreg = parse_args(['-c', bench.recipes[method.recipe], *options])[0].gradreg
        own = {option.flag for option in task_options(gradreg)}
        cmd += ['--epochs', '2', '--warmup-epochs', '0']
        cmd += [arg for flag in ('--gn-warmup-epochs', '--attack-warmup-epochs') if flag in own for arg in (flag, '0')]
    if os.path.isdir(folder):  # an interrupted attempt: start over (timm-train would take a new folder)
        shutil.rmtree(folder)
    os.makedirs(os.path.join(work, 'runs'), exist_ok=True)
    run(cmd, os.path.join(work, 'runs', f'{experiment}.log'))
    open(os.path.join(folder, 'done'), 'w').close()
    return checkpoint


def eval_folder(work: str, name: str, seed: int, samples: Optional[int]) -> str:
    return os.path.join(work, 'eval', f'{name}-s{seed}-n{samples or "all"}')


def trained_and_evaluated(bench: Benchmark, name: str, seed: int, work: str, samples: Optional[int],
                          quick: bool) -> dict:
    """The run's scores; it is trained only when its evaluation is not there yet (evaluations are kept in
    the repository, checkpoints are not)."""
    done = os.path.exists(os.path.join(eval_folder(work, name, seed, samples), 'results.json'))
    checkpoint = '' if done else train(bench, name, seed, work, quick)
    return evaluate(bench, name, seed, checkpoint, work, samples, quick)


def evaluate(bench: Benchmark, name: str, seed: int, checkpoint: str, work: str, samples: Optional[int],
             quick: bool) -> dict:
    """Clean, PGD-50 and AutoAttack accuracy of one run, and AutoAttack's per-image result (dataset order)."""
    folder = eval_folder(work, name, seed, samples)
    results = os.path.join(folder, 'results.json')
    if not os.path.exists(results):
        cmd = [sys.executable, '-m', 'timm_gradreg.cli.evaluate', '--checkpoint', checkpoint, '--dataset',
               bench.eval_dataset, '--eps', '0', bench.eps, '--steps', '5' if quick else '50', '--autoattack',
               '--aa-eps', bench.eps, '--output', folder, '--no-progress', '--workers', '0', '--labels', name]
        if samples:
            cmd += ['--num-samples', str(samples)]
        os.makedirs(os.path.join(work, 'eval'), exist_ok=True)
        run(cmd, folder + '.log')
    model = json.load(open(results))['models'][0]
    import torch
    flags = torch.load(os.path.join(folder, f'flags_{name}.pt'))
    robust = {int(i): bool(r) for i, r in zip(flags['indices'], flags['aa_robust'].tolist())}
    return {'seed': seed, 'clean': model['clean_accuracy'], 'pgd50': model['sweep']['accuracy'][-1],
            'autoattack': model['autoattack']['robust_accuracy'], 'num_samples': model['num_samples'],
            'robust': robust}


def time_steps(setting: str, methods: List[str], work: str, steps: int) -> Dict[str, dict]:
    """Each method's step time relative to PGD-3, all in one interleaved run (kept in WORK/cost_SETTING.json);
    on CPU the warm-up goes on, up to MAX_WARMUP_ROUNDS, until no step faults in fresh pages."""
    path = os.path.join(work, f'cost_{setting}.json')
    if not os.path.exists(path):
        bench = sorted(set(methods) | {REFERENCE})
        cmd = [sys.executable, os.path.join(ROOT, 'benchmarks', 'step_cost.py'), *COST_SETTINGS[setting],
               '--methods', *bench, '--steps', str(steps), '--warmup', '1', '--max-warmup', str(MAX_WARMUP_ROUNDS),
               '--no-memory', '--no-fd-check', '--output', path]
        run(cmd, os.path.join(work, f'cost_{setting}.log'))
    rows = {r['method']: r for r in json.load(open(path))['rows'] if not r.get('compiled')}
    return {m: {'ratio': rows[m]['ratio'], 'passes': rows[m]['passes']} for m in methods if m in rows}


def summarize(values: List[float]) -> dict:
    return {'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'values': values}


def shared_images(*sides: Sequence[dict]) -> List[int]:
    """The images every run of these sides was attacked on (the seeded subsets are nested)."""
    return sorted(set.intersection(*(set(r['robust']) for side in sides for r in side)))


def robust_accuracy(side: Sequence[dict], images: Sequence[int]) -> float:
    """Mean AutoAttack accuracy (%) of a side's runs on these images."""
    return 100.0 * statistics.fmean(statistics.fmean(r['robust'][i] for i in images) for r in side)


def paired_ratio(runs: Sequence[dict], reference: Sequence[dict]) -> float:
    """Mean AutoAttack accuracy over the reference's, both on the images they share."""
    images = shared_images(runs, reference)
    return robust_accuracy(runs, images) / robust_accuracy(reference, images) if images else float('nan')


def robust_flags(side: Sequence[dict], images: Sequence[int]):
    """Each run's AutoAttack result on these images: a float array [seeds, images] of 1 (robust) and 0."""
    import numpy as np
    return np.array([[run['robust'][i] for i in images] for run in side], dtype=np.float64)


def ratio_interval(runs: Sequence[dict], reference: Sequence[dict], draws: int = 2000,
                   seed: int = 0) -> Tuple[float, float]:
    """95% bootstrap interval of mean AutoAttack accuracy / the reference's, over seeds and images.

    Each draw resamples the images the two share (one draw for both: they were attacked on the same
    images) and each side's seeds."""
    import numpy as np
    images = shared_images(runs, reference)
    if not images:
        return float('nan'), float('nan')
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(images), size=(draws, len(images)))

    def accuracy(side):
        per_seed = robust_flags(side, images)[:, chosen].mean(axis=2)  # [seeds, draws]
        picks = rng.integers(0, len(side), size=(draws, len(side)))
        return per_seed[picks, np.arange(draws)[:, None]].mean(axis=1)
    at = accuracy(reference)
    ratios = np.sort(accuracy(runs)[at > 0] / at[at > 0])
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def projected_interval(runs: Sequence[dict], reference: Sequence[dict], seeds: int, images: int,
                       draws: int = 2000, seed: int = 0) -> Tuple[float, float]:
    """About where the 95% interval of the ratio to AT would lie with ``seeds`` seeds a side on
    ``images`` images, the estimate staying where it is: what a larger study could decide.

    The ratio's variance is split into its images' part (a bootstrap over the shared images, the seeds
    kept) and its seeds' part (the delta method on the per-seed accuracies); each is scaled to the new
    counts (n / images, k / seeds)."""
    import numpy as np
    shared = shared_images(runs, reference)
    if not shared or len(runs) < 2 or len(reference) < 2:
        return float('nan'), float('nan')
    a, b = robust_flags(runs, shared), robust_flags(reference, shared)  # [seeds, images]
    ratio = a.mean() / b.mean()
    chosen = np.random.default_rng(seed).integers(0, len(shared), size=(draws, len(shared)))
    image_var = np.var(a[:, chosen].mean(axis=(0, 2)) / b[:, chosen].mean(axis=(0, 2)))
    per_seed_a, per_seed_b = a.mean(axis=1), b.mean(axis=1)
    seed_var = ratio ** 2 * (per_seed_a.var(ddof=1) / per_seed_a.mean() ** 2
                             + per_seed_b.var(ddof=1) / per_seed_b.mean() ** 2) / seeds
    half = 1.96 * float(np.sqrt(image_var * len(shared) / images + seed_var))
    return float(ratio - half), float(ratio + half)


def verdict(interval: Tuple[float, float]) -> str:
    low, high = interval
    return 'above' if low >= TARGET_SHARE else 'below' if high < TARGET_SHARE else 'across'


def pareto(points: Dict[str, tuple]) -> List[str]:
    """Names on the front: no other point is at most as costly and strictly more robust."""
    front = [n for n, (c, a) in points.items()
             if not any(c2 <= c and a2 > a or c2 < c and a2 >= a for m, (c2, a2) in points.items() if m != n)]
    return sorted(front, key=lambda n: points[n][0])


def cost_key(data: dict) -> str:
    return 'cost_ratio' if data.get('cost_setting') == 'resnet50' else 'cost_ratio_demo'


def decide(data: dict) -> None:
    """The Pareto front and the target, from the methods' AutoAttack means, intervals and costs."""
    key = cost_key(data)
    points = {n: (m[key], m['autoattack']['mean']) for n, m in data['methods'].items() if m.get(key) is not None}
    data['pareto'] = pareto(points)
    data['target'] = {n: m['ratio_to_at']['verdict'] for n, m in data['methods'].items()
                      if m.get('ratio_to_at') and m.get(key) is not None and m[key] <= TARGET_COST}


def markdown(datasets: Dict[str, dict]) -> str:
    lines = ['# Cost–robustness frontier', '']
    for name, data in datasets.items():
        key = cost_key(data)
        at = data['methods'].get('pgd', {}).get('autoattack', {}).get('mean')
        lines += [f"## {data['title']} (ε {data['eps']})", '',
                  f"AutoAttack standard and PGD-{data['pgd_steps']} on the last checkpoint, on a seeded subset of the "
                  "test split (n images per method; a larger n extends the smaller sample); mean ± std over seeds; "
                  "the ratio to PGD-3 AT on the images both share, with its 95% bootstrap interval over seeds and "
                  f"images, and where that interval lies against {TARGET_SHARE:.0%}; cost: a training step "
                  "relative to PGD-3 in one interleaved run "
                  f"(resnet50-GELU 128 px batch 16, and the demo model), on {data['device']}.", '',
                  f"| method | seeds | n | clean | PGD-{data['pgd_steps']} | AutoAttack | ratio to AT [95%] | vs 90% | "
                  'cost (resnet50) | cost (demo) | passes |',
                  '|---|---|---|---|---|---|---|---|---|---|---|']
        for method, m in sorted(data['methods'].items(),  # untimed methods last
                                key=lambda kv: kv[1][key] if kv[1].get(key) is not None else math.inf):
            def ms(k):
                return f"{m[k]['mean']:.1f} ± {m[k]['std']:.1f}"
            ratio = m.get('ratio_to_at') or {}
            share = (f"{ratio['mean']:.2f} [{ratio['ci95'][0]:.2f}, {ratio['ci95'][1]:.2f}]" if ratio else
                     (f"{m['autoattack']['mean'] / at:.2f}" if at else '—'))
            costs = [f"{m[c]:.2f}" if m.get(c) is not None else '—' for c in ('cost_ratio', 'cost_ratio_demo')]
            lines.append(f"| {method} | {len(m['autoattack']['values'])} | {m['autoattack'].get('n', '—')} | "
                         f"{ms('clean')} | {ms('pgd50')} | {ms('autoattack')} | {share} | "
                         f"{ratio.get('verdict', '—')} | {costs[0]} | {costs[1]} | {m.get('passes') or '—'} |")
        met = [n for n, v in data.get('target', {}).items() if v == 'above']
        open_ = [n for n, v in data.get('target', {}).items() if v == 'across']
        if not any(m.get('ratio_to_at') for m in data['methods'].values()):
            decision = 'not decided here: these runs kept no per-image results, so their ratios have no interval'
        else:
            decision = ((f"met by {', '.join(met)}" if met else 'no method meets it with its whole interval above 90%')
                        + (f"; not decidable (interval across 90%): {', '.join(open_)}" if open_ else ''))
        front = ', '.join(data['pareto']) or '—'
        lines += ['', f"Pareto front (AutoAttack vs {data['cost_setting']} cost): {front}.",
                  '', f"Target, ≥ 90% of AT's AutoAttack at ≤ {TARGET_COST}× its step cost: {decision}.", '']
        projected = {n: m['ratio_to_at']['projected'] for n, m in data['methods'].items()
                     if m.get('ratio_to_at', {}).get('projected')}
        if projected:
            first = next(iter(projected.values()))
            lines += [f"Projected at {first['seeds']} seeds × {first['n']} images, the estimates where they are "
                      "(the images' and the seeds' parts of the variance each scaled to the larger count): "
                      + '; '.join(f"{n} [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}], {p['verdict']}"
                                  for n, p in projected.items()) + '.', '']
        if data.get('missing'):
            lines += [f"Methods not run yet: {data['missing']}.", '']
        if data.get('missing_runs'):
            lines += [f"Runs not done yet (method-seed; -nN: on the larger sample): {data['missing_runs']}.", '']
    return '\n'.join(lines)


def plot(datasets: Dict[str, dict], path: str) -> None:
    """A panel per dataset: AutoAttack vs cost, seed error bars, the Pareto front and the target lines."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
    for ax, data in zip(axes[0], datasets.values()):
        key = cost_key(data)
        points = {n: (m[key], m['autoattack']['mean']) for n, m in data['methods'].items() if m.get(key) is not None}
        at = data['methods'].get('pgd', {}).get('autoattack', {}).get('mean')
        for rank, (name, (cost, acc)) in enumerate(sorted(points.items(), key=lambda kv: kv[1][1])):
            ax.errorbar(cost, acc, yerr=data['methods'][name]['autoattack']['std'], fmt='o', capsize=3)
            ax.annotate(name, (cost, acc), textcoords='offset points', fontsize=7, xytext=(5, -9 if rank % 2 else 3))
        front = [points[n] for n in data['pareto'] if n in points]
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], 'k--', lw=1, label='Pareto front')
        if at:
            ax.axhline(TARGET_SHARE * at, color='grey', lw=0.8, ls=':', label='90% of PGD-3 AT')
            ax.axvline(TARGET_COST, color='grey', lw=0.8, ls='-.', label='0.5× PGD-3 cost')
        ax.set_xlabel('training-step cost relative to PGD-3 (' + ('resnet50-GELU, 128 px, batch 16)'
                      if key == 'cost_ratio' else 'the demo model)'))
        ax.set_ylabel(f"AutoAttack accuracy at ε {data['eps']} (%), mean ± std over seeds")
        ax.set_title(data['title'])
        if ax.get_legend_handles_labels()[0]:  # a run without AT or timings draws no reference lines
            ax.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_datasets(path: str) -> Dict[str, dict]:
    """The datasets of an existing frontier.json (one written before the dataset level is the digits')."""
    if not os.path.exists(path):
        return {}
    data = json.load(open(path))
    if 'datasets' in data:
        return data['datasets']
    data.setdefault('title', BENCHMARKS['digits'].title)
    return {'digits': data}


def near_target(scores: Dict[str, List[dict]]) -> List[str]:
    """AT and the methods whose mean AutoAttack accuracy is within NEAR_POINTS of 90% of AT's, on the
    images both were attacked on."""
    def gap(runs):
        images = shared_images(runs, scores['pgd'])
        return robust_accuracy(runs, images) - TARGET_SHARE * robust_accuracy(scores['pgd'], images)
    return [n for n, runs in scores.items() if n == 'pgd' or abs(gap(runs)) <= NEAR_POINTS]


def wants_larger_sample(seeds: Sequence[int], near_seeds: Sequence[int], samples: int, near_samples: int) -> bool:
    """Whether the study near the target goes past the base one: more images, or more seeds."""
    return near_samples > samples or set(near_seeds) > set(seeds)


def evaluated_scores(bench: Benchmark, methods: Sequence[str], seeds: Sequence[int], near_seeds: Sequence[int],
                     samples: int, near_samples: int, work: str) -> Tuple[Dict[str, List[dict]], List[str]]:
    """The scores of a study in progress, from the evaluations that are there, and the runs still missing.

    A method is scored on the larger sample once as many seeds as the base study's have it there
    (a mix of sample sizes within a method would weigh its seeds unequally), else on the base sample.
    The missing runs are the base seeds not evaluated, and the larger sample's runs of AT and of the
    methods near the target."""
    def have(name, seed, n):
        return os.path.exists(os.path.join(eval_folder(work, name, seed, n), 'results.json'))
    scores: Dict[str, List[dict]] = {}
    missing: List[str] = []
    for name in methods:
        near_done = [s for s in near_seeds if have(name, s, near_samples)] if near_samples > samples else []
        chosen, n = (near_done, near_samples) if len(near_done) >= len(seeds) else (
            [s for s in seeds if have(name, s, samples)], samples)
        missing += [f'{name}-s{s}' for s in seeds if not have(name, s, samples) and s not in chosen]
        if chosen:
            scores[name] = [evaluate(bench, name, s, '', work, n, False) for s in chosen]
    if 'pgd' in scores and wants_larger_sample(seeds, near_seeds, samples, near_samples):
        missing += [f'{name}-s{s}-n{near_samples}' for name in near_target(scores) for s in near_seeds
                    if not have(name, s, near_samples)]
    return scores, missing


def method_entry(name: str, runs: List[dict], reference: Optional[List[dict]], costs: Dict[str, dict],
                 bench: Benchmark, quick: bool) -> dict:
    """One method's row: scores over seeds, step costs, and its ratio to AT with the verdict against 90%
    (projected to the larger study where the interval is across)."""
    entry = {key: summarize([r[key] for r in runs]) for key in ('clean', 'pgd50', 'autoattack')}
    entry['autoattack']['n'] = runs[0]['num_samples']
    for setting, key in (('resnet50', 'cost_ratio'), ('demo', 'cost_ratio_demo')):
        entry[key] = costs[setting].get(name, {}).get('ratio') if setting in costs else None
    entry['passes'] = next((c[name]['passes'] for c in costs.values() if name in c), None)
    if reference is None:
        return entry
    ci = ratio_interval(runs, reference)
    entry['ratio_to_at'] = {'mean': paired_ratio(runs, reference), 'ci95': list(ci), 'verdict': verdict(ci)}
    if verdict(ci) == 'across' and not quick:
        wider = projected_interval(runs, reference, len(bench.seeds_near), bench.samples_near)
        if not math.isnan(wider[0]):  # nan with fewer than 2 seeds a side
            entry['ratio_to_at']['projected'] = {'seeds': len(bench.seeds_near), 'n': bench.samples_near,
                                                 'ci95': list(wider), 'verdict': verdict(wider)}
    return entry


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    bench = BENCHMARKS[args.dataset]
    seeds = args.seeds or list(bench.seeds)
    samples = args.aa_samples or bench.samples
    near_samples, near_seeds = max(samples, bench.samples_near), sorted(set(seeds) | set(bench.seeds_near))
    if args.quick:
        seeds, samples, args.cost, args.cost_steps, args.no_near = seeds[:1], args.aa_samples or 16, ['demo'], 1, True
    if args.no_near:
        near_samples, near_seeds = samples, list(seeds)
    work = args.work or os.path.join(args.output, 'work', args.dataset)
    scores: Dict[str, List[dict]] = {}
    missing_runs: List[str] = []
    if args.evaluated_only:
        scores, missing_runs = evaluated_scores(bench, args.methods, seeds, near_seeds, samples, near_samples, work)
    else:
        for name in args.methods:
            scores[name] = [trained_and_evaluated(bench, name, seed, work, samples, args.quick) for seed in seeds]
    wants_near = wants_larger_sample(seeds, near_seeds, samples, near_samples)
    if not args.no_near and not args.evaluated_only and 'pgd' in scores and wants_near:
        for name in near_target(scores):  # the larger sample and more seeds where the target is close
            scores[name] = [trained_and_evaluated(bench, name, seed, work, near_samples, args.quick)
                            for seed in near_seeds]
    costs = {setting: time_steps(setting, args.methods, work, args.cost_steps) for setting in args.cost}
    import torch
    data = {'title': bench.title, 'eps': bench.eps, 'pgd_steps': 5 if args.quick else 50,
            'device': f"{os.cpu_count()}-core CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
            'methods': {}}
    for name, runs in scores.items():
        data['methods'][name] = method_entry(name, runs, scores.get('pgd'), costs, bench, args.quick)
    datasets = load_datasets(os.path.join(args.output, 'frontier.json'))
    if args.update and args.dataset in datasets:
        kept = datasets[args.dataset]['methods']
        data['methods'] = {**{n: m for n, m in kept.items() if n not in data['methods']}, **data['methods']}
        if 'cost_setting' in datasets[args.dataset] and not costs:
            data['cost_setting'] = datasets[args.dataset]['cost_setting']
    data.setdefault('cost_setting', 'resnet50' if 'resnet50' in costs else 'demo')
    data['missing'] = ', '.join(sorted(set(METHODS) - set(data['methods'])))
    data['missing_runs'] = ', '.join(missing_runs)
    decide(data)
    datasets = {**datasets, args.dataset: data} if args.update else {args.dataset: data}
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, 'frontier.json'), 'w') as f:
        json.dump({'datasets': datasets}, f, indent=1)
    with open(os.path.join(args.output, 'frontier.md'), 'w') as f:
        f.write(markdown(datasets))
    if any(d['methods'] for d in datasets.values()):
        plot(datasets, os.path.join(args.output, 'frontier.png'))
    print(markdown(datasets))
    return 0


if __name__ == '__main__':
    sys.exit(main())
