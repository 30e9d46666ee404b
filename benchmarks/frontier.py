"""The cost–robustness frontier: every method trained on a benchmark, attacked, and timed against PGD-3.

    python benchmarks/frontier.py                                  # digits, all methods -> docs/frontier/
    python benchmarks/frontier.py --dataset fashion_mnist          # Fashion-MNIST (Debian's idx files)
    python benchmarks/frontier.py --methods gradnorm pgd --seeds 0
    python benchmarks/frontier.py --quick --output /tmp/frontier   # a smoke test: 1 seed, 2 epochs

Each method trains with timm-train from the benchmark's recipes (same model, schedule and ε; the FGSM
step of fgsm and gradalign warmed up as PGD-3's) and is evaluated by gradreg-eval on the last checkpoint
(AutoAttack standard and PGD-50 at ε, on a seeded subset of the test split); each evaluation leaves a
compact record in results/frontier/DATASET/eval/ (frontier_records.py). Training steps are timed against
PGD-3 by benchmarks/step_cost.py in COST_RUNS runs, each timing the configuration the benchmark trains
and the resnet50-GELU 128 px proxy in the same interleaved rounds, each leaving a record in
results/frontier/DATASET/cost/. Methods within 5 points of 90% of AT's AutoAttack accuracy (and AT
itself) get the benchmark's larger sample and more seeds. Each method's AutoAttack ratio to AT has a 95%
interval (docs/statistics.md); the target (≥ 90% of AT at ≤ 0.5× its step cost as trained) is decided
with it and with the timing runs' range. Writes frontier.json, frontier.md and frontier.png from the
records alone. Resumable: a run whose record exists is neither trained, attacked nor timed again;
--cost-runs 0 skips the timing, so two processes can share the training (one thread each) and a last
``--evaluated-only`` run times and renders.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the cost package beside this script
from cost.methods import METHODS as ALL_METHODS, REFERENCE, BenchMethod  # noqa: E402
from frontier_records import RESULTS, read_evaluation_record, record_path, scores as record_scores  # noqa: E402
from frontier_records import cost_record_path, read_run_record, write_cost_record, write_evaluation_record  # noqa: E402
from timm_gradreg.evaluate.paired import t_quantile_975  # noqa: E402
from timm_gradreg.tasks import task_options  # noqa: E402
from timm_gradreg.train import parse_args  # noqa: E402


@dataclass(frozen=True)
class Benchmark:
    """A dataset of the frontier: its recipes, ε, evaluation sample and seeds."""
    key: str  # the dataset's name here, in records and in --dataset
    title: str
    eps: str
    recipes: Dict[str, str]  # natural / gradnorm / advtrain -> recipe
    eval_dataset: str
    samples: int  # AutoAttack and PGD-50 images of most methods (None: the whole split)
    samples_near: int  # ... of AT and of the methods within 5 points of the target
    seeds: Tuple[int, ...]
    seeds_near: Tuple[int, ...]
    igr_weight: str  # the authors' SVHN λ (l2dbl 10^4 at batch 256) at its per-sample strength: 39·batch
    trained: Tuple[str, ...]  # step_cost.py options of the configuration the benchmark trains


BENCHMARKS: Dict[str, Benchmark] = {
    'digits': Benchmark('digits', 'digits demo', '24/255',
                        {k: f'demo/digits_{k}' for k in ('natural', 'gradnorm', 'advtrain')}, 'demo/digits',
                        100, 100, (0, 1, 2), (0, 1, 2), '2500',
                        ('--model', 'test_resnet', '--act', 'gelu', '--img-size', '32', '-b', '64', '--num-classes', '10')),
    'fashion_mnist': Benchmark('fashion_mnist', 'Fashion-MNIST', '0.1',
                               {k: f'fmnist/{k}' for k in ('natural', 'gradnorm', 'advtrain')}, 'fashion_mnist', 500,
                               1000, (0, 1, 2), (0, 1, 2, 3, 4), '5000',
                               ('--model', 'test_resnet', '--act', 'gelu', '--img-size', '28', '--in-chans', '1', '-b',
                                '128', '--num-classes', '10')),
}

#: The frontier's methods: those of the benchmarks with a base recipe (benchmarks/cost/methods.py).
METHODS: Dict[str, BenchMethod] = {name: m for name, m in ALL_METHODS.items() if m.recipe}
#: The step-cost settings, timed in the same interleaved rounds: the configuration the benchmark trains (the
#: target is decided on it) and resnet50-GELU at 128 px, a proxy for the paper's ImageNet models.
PROXY = ('--model', 'resnet50', '--act', 'gelu', '--img-size', '128', '-b', '16', '--num-classes', '10')
COST_SETTINGS = ('trained', 'proxy')
#: timing runs per benchmark: the target's cost side is decided on their spread
COST_RUNS = 5
TARGET_SHARE, TARGET_COST, NEAR_POINTS = 0.9, 0.5, 5.0
#: the seed whose run the gradient-masking checklist examines (benchmarks/frontier_checks.py)
CHECKED_SEED = 0
#: untimed rounds at most before timing on CPU, until no step faults in fresh pages
MAX_WARMUP_ROUNDS = 6


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', default='digits', choices=list(BENCHMARKS))
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--seeds', nargs='+', type=int, default=None, help='(default: the benchmark\'s)')
    parser.add_argument('--output', default=os.path.join(ROOT, 'docs', 'frontier'))
    parser.add_argument('--work', default=None,
                        help='checkpoints and gradreg-eval folders, out of git (default: output/frontier/DATASET)')
    parser.add_argument('--records', default=RESULTS,
                        help='the committed evaluation records, one per run (default: results/frontier)')
    parser.add_argument('--aa-samples', type=int, default=None,
                        help="AutoAttack/PGD samples (default: the benchmark's)")
    parser.add_argument('--cost-runs', type=int, default=COST_RUNS,
                        help=f'timing runs, each the trained configuration and the resnet50 proxy interleaved '
                             f'({COST_RUNS}; 0: no timing)')
    parser.add_argument('--cost-steps', type=int, default=5, help='timed rounds per method and run (5)')
    parser.add_argument('--no-near', action='store_true', help='skip the larger sample and extra seeds near the target')
    parser.add_argument('--quick', action='store_true', help='1 seed, 2 epochs, 16 samples, demo cost only')
    parser.add_argument('--evaluated-only', action='store_true',
                        help='use the runs whose record is there and train none (a study in progress); the runs '
                             'without one are printed, not published')
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
    return train_run(['-c', bench.recipes[method.recipe], *options], seed, work, f'{name}-s{seed}', quick)


def train_run(flags: List[str], seed: int, work: str, experiment: str, quick: bool) -> str:
    """Train timm-train ``flags`` at ``seed`` into WORK/runs/EXPERIMENT (the last checkpoint, no robust validation);
    a finished run is kept, an interrupted one started over."""
    folder = os.path.join(work, 'runs', experiment)
    checkpoint = os.path.join(folder, 'last.pth.tar')
    if os.path.exists(checkpoint) and os.path.exists(os.path.join(folder, 'done')):
        return checkpoint
    cmd = [sys.executable, '-m', 'timm_gradreg.cli.train', *flags,
           '--seed', str(seed), '--output', os.path.join(work, 'runs'), '--experiment', experiment,
           '--eval-metric', 'top1', '--adv-val-steps', '0', '--workers', '0', '--checkpoint-hist', '1']
    if quick:  # two epochs, no warm-up (the method's own warm-up options only: others would be refused)
        gradreg = parse_args(list(flags))[0].gradreg
        own = {option.flag for option in task_options(gradreg) if option.applies is None}  # not a part's option
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
                          quick: bool, records: str = RESULTS) -> dict:
    """The run's scores; it is trained only when its record is not there yet (records are committed,
    checkpoints are not)."""
    done = os.path.exists(record_path(bench.key, name, seed, samples, records)) or \
        os.path.exists(os.path.join(eval_folder(work, name, seed, samples), 'results.json'))
    checkpoint = '' if done else train(bench, name, seed, work, quick)
    return evaluate(bench, name, seed, checkpoint, work, samples, quick, records)


#: runs of the activation and edge comparisons (docs/claims.md rows b, c), trained and evaluated as the
#: frontier's: a frontier method with another activation, and edge alignment from the natural recipe
STUDY_RUNS: Dict[str, Tuple[str, ...]] = {
    'gradnorm-relu': ('gradnorm', '--model-kwargs', 'act_layer=relu'),
    'gradnorm-silu': ('gradnorm', '--model-kwargs', 'act_layer=silu'),
    'pgd-relu': ('pgd', '--model-kwargs', 'act_layer=relu'),
    'edge': ('natural', '--gradreg', 'edge'),
}


def train_flags(bench: Benchmark, name: str) -> List[str]:
    """The timm-train flags a run trains with: its recipe, then its options."""
    base, *extra = STUDY_RUNS.get(name, (name,))
    method = METHODS[base]
    options = [] if '--gradreg' in extra else [a.format(eps=bench.eps, igr=bench.igr_weight)
                                               for a in method.timm_train_flags()]
    return ['-c', bench.recipes[method.recipe], *options, *extra]


def evaluate(bench: Benchmark, name: str, seed: int, checkpoint: str, work: str, samples: Optional[int],
             quick: bool, records: str = RESULTS, flags: Optional[List[str]] = None) -> dict:
    """Clean, PGD-50 and AutoAttack accuracy of one run and its per-image results, from its record; the record is
    written from gradreg-eval's folder (the evaluation is run first where that is not there either). ``flags``:
    the run's timm-train flags (default: the method's, ``train_flags``)."""
    path = record_path(bench.key, name, seed, samples, records)
    if not os.path.exists(path):
        folder = eval_folder(work, name, seed, samples)
        seconds = None
        if not os.path.exists(os.path.join(folder, 'results.json')):
            cmd = [sys.executable, '-m', 'timm_gradreg.cli.evaluate', '--checkpoint', checkpoint, '--dataset',
                   bench.eval_dataset, '--eps', '0', bench.eps, '--steps', '5' if quick else '50', '--autoattack',
                   '--aa-eps', bench.eps, '--output', folder, '--no-progress', '--workers', '0', '--labels', name]
            if samples:
                cmd += ['--num-samples', str(samples)]
            os.makedirs(os.path.join(work, 'eval'), exist_ok=True)
            started = time.perf_counter()
            run(cmd, folder + '.log')
            seconds = time.perf_counter() - started
        write_evaluation_record(folder, bench.key, name, seed, samples, flags or train_flags(bench, name), path,
                                seconds, versions=None if seconds is not None else {})
    return record_scores(read_evaluation_record(path))


def time_steps(bench: Benchmark, methods: List[str], work: str, steps: int, runs: int,
               records: str = RESULTS, proxy: Sequence[str] = PROXY) -> Dict[str, Dict[str, List[float]]]:
    """Each method's step time relative to PGD-3 in each of ``runs`` timing runs, per setting ('trained', 'proxy'):
    each run times both settings in one interleaved run, and leaves its record (records/DATASET/cost/run-K.json);
    on CPU the warm-up goes on, up to MAX_WARMUP_ROUNDS, until no step faults in fresh pages."""
    bench_methods = sorted(set(methods) | {REFERENCE})
    ratios: Dict[str, Dict[str, List[float]]] = {setting: {} for setting in COST_SETTINGS}
    for k in range(runs):
        path = cost_record_path(bench.key, k, records)
        if not os.path.exists(path):
            out = os.path.join(work, f'cost-run{k}.json')
            if not os.path.exists(out):
                common = ['--methods', *bench_methods, '--steps', str(steps), '--warmup', '1', '--max-warmup',
                          str(MAX_WARMUP_ROUNDS), '--no-memory', '--no-fd-check']
                cmd = [sys.executable, os.path.join(ROOT, 'benchmarks', 'step_cost.py'), *bench.trained, *common,
                       '--interleave', 'proxy', ' '.join([*proxy, *common]), '--output', out]
                os.makedirs(work, exist_ok=True)
                run(cmd, os.path.join(work, f'cost-run{k}.log'))
            write_cost_record(out, path, {'trained': list(bench.trained), 'proxy': list(proxy)})
        record = read_evaluation_record(path)
        ratios.setdefault('_devices', [])
        if record['machine'] not in ratios['_devices']:
            ratios['_devices'].append(record['machine'])
        for setting in COST_SETTINGS:
            for row in record['settings'][setting]['rows']:
                ratios[setting].setdefault(row['method'], []).append(row['ratio'])
    return ratios


def cost_summary(ratios: List[float]) -> dict:
    """A method's step cost relative to PGD-3 over the timing runs: the median run, the range, and where the range
    lies against the target's TARGET_COST ('within', 'over', or 'across' when the runs disagree)."""
    low, high = min(ratios), max(ratios)
    return {'median': statistics.median(ratios), 'range': [low, high], 'runs': ratios,
            'verdict': 'within' if high <= TARGET_COST else 'over' if low > TARGET_COST else 'across'}


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


def _ratio_parts(runs: Sequence[dict], reference: Sequence[dict], draws: int = 2000, seed: int = 0):
    """The ratio of mean AutoAttack accuracies on the shared images, its images' variance (a bootstrap over the
    shared images, one draw for both sides: they were attacked on the same images; the seeds kept) and its seeds'
    variance (the delta method on each side's per-seed accuracies; None with fewer than 2 seeds a side)."""
    import numpy as np
    shared = shared_images(runs, reference)
    a, b = robust_flags(runs, shared), robust_flags(reference, shared)  # [seeds, images]
    ratio = a.mean() / b.mean()
    chosen = np.random.default_rng(seed).integers(0, len(shared), size=(draws, len(shared)))
    boot_b = b[:, chosen].mean(axis=(0, 2))
    image_var = float(np.var(a[:, chosen].mean(axis=(0, 2))[boot_b > 0] / boot_b[boot_b > 0]))
    if len(runs) < 2 or len(reference) < 2:
        return ratio, image_var, None, len(shared)
    per_a, per_b = a.mean(axis=1), b.mean(axis=1)  # Var(A/B) ≈ Var(A)/B² + A²·Var(B)/B⁴ (A may be 0)
    seed_var = (per_a.var(ddof=1) / len(runs) + ratio ** 2 * per_b.var(ddof=1) / len(reference)) / per_b.mean() ** 2
    return ratio, image_var, float(seed_var), len(shared)


def ratio_interval(runs: Sequence[dict], reference: Sequence[dict], draws: int = 2000,
                   seed: int = 0) -> Tuple[float, float]:
    """95% interval of mean AutoAttack accuracy / the reference's (docs/statistics.md): the images' part with the
    normal quantile, the seeds' part with Student's t on the fewer seeds of the two sides less one (a normal
    quantile over 3 seeds is far too narrow); the images' part alone with a single seed a side."""
    if not shared_images(runs, reference):
        return float('nan'), float('nan')
    ratio, image_var, seed_var, _ = _ratio_parts(runs, reference, draws, seed)
    t = t_quantile_975(min(len(runs), len(reference)) - 1) if seed_var is not None else 0.0
    half = math.sqrt(1.959964 ** 2 * image_var + t ** 2 * (seed_var or 0.0))
    return float(ratio - half), float(ratio + half)


def projected_interval(runs: Sequence[dict], reference: Sequence[dict], seeds: int, images: int,
                       draws: int = 2000, seed: int = 0) -> Tuple[float, float]:
    """About where the 95% interval of the ratio to AT would lie with ``seeds`` seeds a side on ``images`` images,
    the estimate staying where it is: the images' part scaled by n / images, the seeds' part by k / seeds and
    taken with Student's t on ``seeds`` − 1 degrees of freedom."""
    if not shared_images(runs, reference):
        return float('nan'), float('nan')
    ratio, image_var, seed_var, shared = _ratio_parts(runs, reference, draws, seed)
    if seed_var is None:
        return float('nan'), float('nan')
    k = min(len(runs), len(reference))
    half = math.sqrt(1.959964 ** 2 * image_var * shared / images + t_quantile_975(seeds - 1) ** 2 * seed_var * k / seeds)
    return float(ratio - half), float(ratio + half)


def verdict(interval: Tuple[float, float]) -> str:
    low, high = interval
    return 'above' if low >= TARGET_SHARE else 'below' if high < TARGET_SHARE else 'across'


def pareto(points: Dict[str, tuple]) -> List[str]:
    """Names on the front: no other point is at most as costly and strictly more robust."""
    front = [n for n, (c, a) in points.items()
             if not any(c2 <= c and a2 > a or c2 < c and a2 >= a for m, (c2, a2) in points.items() if m != n)]
    return sorted(front, key=lambda n: points[n][0])


def trained_cost(method: dict) -> Optional[float]:
    """The median step cost of a method on the benchmark's trained configuration (None: not timed)."""
    return (method.get('cost') or {}).get('trained', {}).get('median')


def decide(data: dict) -> None:
    """The Pareto front and the target, from the methods' AutoAttack means, intervals and trained-configuration
    costs: a method is a candidate when some timing run puts it within TARGET_COST."""
    points = {n: (trained_cost(m), m['autoattack']['mean']) for n, m in data['methods'].items()
              if trained_cost(m) is not None}
    data['pareto'] = pareto(points)
    data['target'] = {n: {'robustness': m['ratio_to_at']['verdict'], 'cost': m['cost']['trained']['verdict']}
                      for n, m in data['methods'].items()
                      if m.get('ratio_to_at') and trained_cost(m) is not None
                      and m['cost']['trained']['verdict'] != 'over'}


def _cost_cell(method: dict, setting: str) -> str:
    cost = (method.get('cost') or {}).get(setting)
    return f"{cost['median']:.2f} [{cost['range'][0]:.2f}–{cost['range'][1]:.2f}]" if cost else '—'


def markdown(datasets: Dict[str, dict]) -> str:
    """frontier.md: a section per dataset, every number computed from the records."""
    lines = ['# Cost–robustness frontier', '',
             'Generated by `python benchmarks/publish.py` (`benchmarks/frontier.py --dataset DATASET --evaluated-only`) from the records in '
             '`results/frontier/` (one per evaluation and per timing run).', '']
    for data in datasets.values():
        runs = data.get('cost_runs', 0)
        lines += [f"## {data['title']} (ε {data['eps']})", '',
                  f"AutoAttack standard and PGD-{data['pgd_steps']} on the last checkpoint, on the n seeded test "
                  "images every method was attacked on (the basis of the table, the ratios and the figure; a larger "
                  "sample extends the smaller one); clean accuracy on the "
                  "whole test split; mean ± std over seeds; the ratio to PGD-3 AT, with its 95% interval (docs/statistics.md: the images bootstrapped, the seeds' part "
                  f"with Student's t), and where that interval lies against {TARGET_SHARE:.0%}; the gradient-masking "
                  f"checklist (Carlini et al. 2019; `gradreg-eval --sanity`) on seed {CHECKED_SEED}'s run trained "
                  "again by `benchmarks/frontier_checks.py` (and the other seeds where a check fails). Cost: a training step relative to PGD-3, the median "
                  f"of {runs} timing runs [their range], each timing the configuration trained here and "
                  f"resnet50-GELU at 128 px (batch 16) in the same interleaved rounds, on {data['device']}.", '',
                  f"| method | seeds | n | clean, whole split | PGD-{data['pgd_steps']} | AutoAttack | "
                  'ratio to AT [95%] | vs 90% | masking checks | cost, as trained | cost, resnet50 proxy | passes |',
                  '|---|---|---|---|---|---|---|---|---|---|---|---|']
        for method, m in sorted(data['methods'].items(),  # untimed methods last
                                key=lambda kv: trained_cost(kv[1]) if trained_cost(kv[1]) is not None else math.inf):
            def ms(k):
                return f"{m[k]['mean']:.1f} ± {m[k]['std']:.1f}" if m.get(k) else '—'
            ratio = m.get('ratio_to_at') or {}
            share = f"{ratio['mean']:.2f} [{ratio['ci95'][0]:.2f}, {ratio['ci95'][1]:.2f}]" if ratio else '—'
            lines.append(f"| {method} | {len(m['autoattack']['values'])} | {m['autoattack'].get('n', '—')} | "
                         f"{ms('split_clean')} | {ms('pgd50')} | {ms('autoattack')} | {share} | "
                         f"{ratio.get('verdict', '—')} | {_checks_cell(m)} | {_cost_cell(m, 'trained')} | "
                         f"{_cost_cell(m, 'proxy')} | "
                         f"{m.get('passes') or '—'} |")
        own = [f"{n} {m['autoattack_own']['mean']:.1f} ± {m['autoattack_own']['std']:.1f} on "
               f"{m['autoattack_own']['n']}" for n, m in data['methods'].items() if m.get('autoattack_own')]
        if own:
            lines += ['', f"AutoAttack on the runs' whole samples: {'; '.join(own)}."]
        flagged = sorted({name for m in data['methods'].values() if m.get('checks')
                          for names in m['checks']['failed'].values() for name in names})
        if flagged:
            lines += ['', 'A failed check means: ' + '; '.join(f'{name}, {check_meaning(name)}' for name in flagged)
                      + '. AutoAttack (its gradient-free Square attack included) is the figure to read for a flagged '
                        'method; its PGD-50 may overstate its robustness.']
        gaps = {n: m['checks']['retrained_gap'] for n, m in data['methods'].items()
                if (m.get('checks') or {}).get('retrained_gap') is not None}
        if gaps:
            worst = max(gaps, key=lambda n: abs(gaps[n]))
            lines += ['', "Where the evaluated run was not kept, the checklist examines one trained again with the same "
                          "recipe, options and seed; training on a CPU is not bitwise reproducible, so these are models "
                          "of the same recipe and seed, not the evaluated weights: their whole-split clean accuracy "
                          f"differs from the evaluated run's by at most {abs(gaps[worst]):.2f} points ({worst})."]
        target = data.get('target', {})
        met = [n for n, v in target.items() if v['robustness'] == 'above' and v['cost'] == 'within']
        open_ = [f"{n} (robustness {v['robustness']}, cost {v['cost']})" for n, v in target.items() if n not in met
                 and v['robustness'] != 'below']
        decision = ((f"met by {', '.join(met)}" if met else 'no method meets it with its whole interval above 90% and '
                     'every timing run within the cost')
                    + (f"; not decidable: {', '.join(open_)}" if open_ else ''))
        front = ', '.join(data['pareto']) or '—'
        lines += ['', f"Pareto front (AutoAttack vs the cost as trained): {front}.",
                  '', f"Target, ≥ 90% of AT's AutoAttack at ≤ {TARGET_COST}× its step cost as trained: {decision}.", '']
        projected = {n: m['ratio_to_at']['projected'] for n, m in data['methods'].items()
                     if m.get('ratio_to_at', {}).get('projected')}
        if projected:
            first = next(iter(projected.values()))
            lines += [f"Projected at {first['seeds']} seeds × {first['n']} images, the estimates where they are "
                      "(the images' and the seeds' parts of the variance each scaled to the larger count): "
                      + '; '.join(f"{n} [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}], {p['verdict']}"
                                  for n, p in projected.items()) + '.', '']
    return '\n'.join(lines)


def plot(datasets: Dict[str, dict], path: str) -> None:
    """A panel per dataset: AutoAttack vs the cost as trained, seed error bars, the Pareto front and the target
    lines (90% of AT's mean on the images every method shares with it, as the ratios are taken)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
    for ax, data in zip(axes[0], datasets.values()):
        points = {n: (trained_cost(m), m['autoattack']['mean']) for n, m in data['methods'].items()
                  if trained_cost(m) is not None}
        for rank, (name, (cost, acc)) in enumerate(sorted(points.items(), key=lambda kv: kv[1][1])):
            low, high = data['methods'][name]['cost']['trained']['range']
            ax.errorbar(cost, acc, yerr=data['methods'][name]['autoattack']['std'],
                        xerr=[[cost - low], [high - cost]], fmt='o', capsize=3)
            ax.annotate(name, (cost, acc), textcoords='offset points', fontsize=7, xytext=(5, -9 if rank % 2 else 3))
        front = [points[n] for n in data['pareto'] if n in points]
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], 'k--', lw=1, label='Pareto front')
        at_line = data.get('at_shared')
        if at_line:
            ax.axhline(TARGET_SHARE * at_line, color='grey', lw=0.8, ls=':', label='90% of PGD-3 AT')
            ax.axvline(TARGET_COST, color='grey', lw=0.8, ls='-.', label='0.5× PGD-3 cost')
        ax.set_xlabel('training-step cost relative to PGD-3, as trained (median and range of the timing runs)')
        ax.set_ylabel(f"AutoAttack accuracy at ε {data['eps']} (%), mean ± std over seeds")
        ax.set_title(data['title'])
        if ax.get_legend_handles_labels()[0]:
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
                     samples: int, near_samples: int, work: str,
                     records: str = RESULTS) -> Tuple[Dict[str, List[dict]], List[str]]:
    """The scores of a study in progress, from the evaluations that are there, and the runs still missing.

    A method is scored on the larger sample once as many seeds as the base study's have it there
    (a mix of sample sizes within a method would weigh its seeds unequally), else on the base sample.
    The missing runs are the base seeds not evaluated, and the larger sample's runs of AT and of the
    methods near the target."""
    def have(name, seed, n):
        return os.path.exists(record_path(bench.key, name, seed, n, records)) or \
            os.path.exists(os.path.join(eval_folder(work, name, seed, n), 'results.json'))
    scores: Dict[str, List[dict]] = {}
    missing: List[str] = []
    for name in methods:
        near_done = [s for s in near_seeds if have(name, s, near_samples)] if near_samples > samples else []
        chosen, n = (near_done, near_samples) if len(near_done) >= len(seeds) else (
            [s for s in seeds if have(name, s, samples)], samples)
        missing += [f'{name}-s{s}' for s in seeds if not have(name, s, samples) and s not in chosen]
        if chosen:
            scores[name] = [evaluate(bench, name, s, '', work, n, False, records) for s in chosen]
    if 'pgd' in scores and wants_larger_sample(seeds, near_seeds, samples, near_samples):
        missing += [f'{name}-s{s}-n{near_samples}' for name in near_target(scores) for s in near_seeds
                    if not have(name, s, near_samples)]
    return scores, missing


#: the runs of a method's configuration chosen on held-out data (benchmarks/tune.py): NAME-tuned
TUNED = '-tuned'


def base_method(name: str) -> str:
    """The frontier method a row trains: a tuned row's method (its step costs what the method's does)."""
    return name[:-len(TUNED)] if name.endswith(TUNED) else name


def tuned_methods(bench: Benchmark, records: str = RESULTS) -> List[str]:
    """The tuned rows that have evaluation records, in METHODS' order."""
    folder = os.path.join(records, bench.key, 'eval')
    names = {f.split('-s')[0] for f in (os.listdir(folder) if os.path.isdir(folder) else []) if TUNED + '-s' in f}
    return [name + TUNED for name in METHODS if name + TUNED in names]


def method_entry(name: str, runs: List[dict], reference: Optional[List[dict]], costs: Dict[str, dict],
                 bench: Benchmark, quick: bool, images: Optional[Sequence[int]] = None) -> dict:
    """One method's row: scores over seeds, step costs, and its ratio to AT with the verdict against 90%
    (projected to the larger study where the interval is across). PGD-50 and AutoAttack are on ``images`` (the
    images every method was attacked on, the basis of the ratios and the figure); 'autoattack_own' on each
    run's whole sample."""
    entry = {key: summarize([r[key] for r in runs]) for key in ('clean', 'pgd50', 'autoattack')}
    entry['autoattack']['n'] = runs[0]['num_samples']
    if images is not None and len(images) < runs[0]['num_samples']:
        entry['autoattack_own'] = entry['autoattack']
        for key, flags in (('pgd50', 'pgd_flags'), ('autoattack', 'robust')):
            entry[key] = summarize([100.0 * statistics.fmean(r[flags][i] for i in images) for r in runs])
        entry['autoattack']['n'] = len(images)
    split = [r.get('split_clean') for r in runs]
    entry['split_clean'] = summarize(split) if all(v is not None for v in split) else None
    base = base_method(name)
    entry['cost'] = {setting: cost_summary(costs[setting][base]) for setting in COST_SETTINGS
                     if base in costs.get(setting, {})}
    entry['passes'] = METHODS[base].passes if base in METHODS else None
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


def checks_entry(records: Sequence[dict], runs: Sequence[dict]) -> Optional[dict]:
    """The gradient-masking checklists of a method's retrained runs (benchmarks/frontier_checks.py: seed 0, and
    the other seeds where a check failed), and how far the retrained models' whole-split clean accuracy is from
    the evaluated ones'."""
    if not records:
        return None
    evaluated = {r['seed']: r['split_clean'] for r in runs if r.get('split_clean') is not None}
    gaps = [(rec.get('split') or {}).get('clean_accuracy', math.nan) - evaluated[rec['seed']] for rec in records
            if rec['seed'] in evaluated]
    return {'seeds': [rec['seed'] for rec in records], 'samples': records[0]['evaluation']['samples'],
            'retrained_gap': max(gaps, key=abs) if gaps else None,
            'failed': {rec['seed']: [c['name'] for c in rec['checks'] if c['passed'] is False] for rec in records},
            'skipped': sorted({c['name'] for rec in records for c in rec['checks'] if c['passed'] is None}),
            'passed': min(len([c for c in rec['checks'] if c['passed']]) for rec in records)}


def check_meaning(name: str) -> str:
    """What a check of the checklist asserts (its docstring's first line, lower-cased)."""
    from timm_gradreg.evaluate.sanity import describe_check
    doc = describe_check(name).rstrip('.')
    return doc[:1].lower() + doc[1:]


def _checks_cell(method: dict) -> str:
    checks = method.get('checks')
    if not checks:
        return 'not run'
    seeds_of: Dict[str, List[str]] = {}
    for seed, names in sorted(checks['failed'].items()):
        for name in names:
            seeds_of.setdefault(name, []).append(str(seed))
    if seeds_of:
        return '; '.join(f"{name} failed on seed{'s' if len(s) > 1 else ''} {', '.join(s)}"
                         for name, s in seeds_of.items()) + f" (of {', '.join(map(str, checks['seeds']))})"
    seeds = f" on seed{'s' if len(checks['seeds']) > 1 else ''} {', '.join(map(str, checks['seeds']))}"
    return f"{checks['passed']} passed{seeds}" + (f" ({len(checks['skipped'])} skipped)" if checks['skipped'] else '')


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    bench = BENCHMARKS[args.dataset]
    seeds = args.seeds or list(bench.seeds)
    samples = args.aa_samples or bench.samples
    near_samples, near_seeds = max(samples, bench.samples_near), sorted(set(seeds) | set(bench.seeds_near))
    proxy = PROXY
    if args.quick:  # the proxy is the trained configuration at a small batch: resnet50 takes minutes on a CPU
        seeds, samples, args.cost_runs, args.cost_steps, args.no_near = seeds[:1], args.aa_samples or 16, 1, 1, True
        proxy = tuple(a if a != bench.trained[bench.trained.index('-b') + 1] else '4' for a in bench.trained)
    if args.no_near:
        near_samples, near_seeds = samples, list(seeds)
    work = args.work or os.path.join(ROOT, 'output', 'frontier', args.dataset)
    scores: Dict[str, List[dict]] = {}
    if args.evaluated_only:
        methods = [*args.methods, *(t for t in tuned_methods(bench, args.records) if base_method(t) in args.methods)]
        scores, missing_runs = evaluated_scores(bench, methods, seeds, near_seeds, samples, near_samples, work,
                                                args.records)
        if missing_runs:
            print(f"runs without a record (not on the page): {', '.join(missing_runs)}", flush=True)
    else:
        for name in args.methods:
            scores[name] = [trained_and_evaluated(bench, name, seed, work, samples, args.quick, args.records)
                            for seed in seeds]
    wants_near = wants_larger_sample(seeds, near_seeds, samples, near_samples)
    if not args.no_near and not args.evaluated_only and 'pgd' in scores and wants_near:
        for name in near_target(scores):  # the larger sample and more seeds where the target is close
            scores[name] = [trained_and_evaluated(bench, name, seed, work, near_samples, args.quick, args.records)
                            for seed in near_seeds]
    timed = sorted({base_method(n) for n in [*args.methods, *scores]})  # every method asked for, trained or not
    costs = time_steps(bench, timed, work, args.cost_steps, args.cost_runs, args.records, proxy) \
        if args.cost_runs else {}
    data = {'title': bench.title, 'eps': bench.eps, 'pgd_steps': 5 if args.quick else 50,
            'device': ', '.join(costs.pop('_devices', None) or ['—']), 'cost_runs': args.cost_runs, 'methods': {}}
    images = shared_images(*scores.values()) if scores else None
    for name, runs in scores.items():
        data['methods'][name] = method_entry(name, runs, scores.get('pgd'), costs, bench, args.quick, images)
        checked = [read_run_record(bench.key, 'checks', name, seed, args.records) for seed in bench.seeds]
        data['methods'][name]['checks'] = checks_entry([r for r in checked if r is not None], runs)
    if 'pgd' in scores:  # the target line of the figure: AT on the images every method shares with it
        data['at_shared'] = robust_accuracy(scores['pgd'], images)
    data['timed_only'] = {name: {'cost': {setting: cost_summary(costs[setting][name]) for setting in COST_SETTINGS
                                          if name in costs.get(setting, {})}, 'passes': METHODS[name].passes}
                          for name in timed if name not in scores and name in METHODS
                          and any(name in costs.get(setting, {}) for setting in COST_SETTINGS)}
    decide(data)
    datasets = load_datasets(os.path.join(args.output, 'frontier.json')) if args.update else {}
    datasets = {**datasets, args.dataset: data}
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
