"""Each method's own knob chosen on a validation split held out of Fashion-MNIST's training set, with the same budget.

    python benchmarks/tune.py                          # every method's sweep, then its chosen configuration
    python benchmarks/tune.py --methods gradnorm pgd   # a second job beside one on the others (one thread each)
    python benchmarks/tune.py --report                 # the sweep so far and the choices, from the records

Each method gets the same number of distinct configurations (GRIDS: GradNorm's λ_GN·ε; AT's, FGSM-RS's and N-FGSM's
training ε), each trained at seed 0 from the frontier's recipe for the method on the 50,000 training images that
``--dataset fashion_mnist_holdout`` keeps, and scored on the 10,000 it holds out: clean accuracy on all of them
and PGD-50 (CE and DLR, gradreg-eval's sweep) at the frontier's ε 0.1 on a seeded 1,000. The configuration with
the highest mean of the two is chosen, by the same rule for every method (the recipe's configuration is in every
grid). The chosen one is then trained on the whole training set at the frontier's seeds and evaluated as the
frontier evaluates (the test split, its 500 images, AutoAttack): records ``results/frontier/fashion_mnist/eval/
METHOD-tuned-sK-n500.json`` beside the recipe rows'. The sweep's records: ``results/tune/fashion_mnist/``, one per
configuration (its flags, the held-out images' indices and per-image results, the accuracies). Resumable: a
configuration or run whose record exists is skipped; checkpoints and gradreg-eval folders stay in the work folder.
"""
import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frontier import BENCHMARKS, METHODS, ROOT, TUNED, evaluate, run, train_flags, train_run  # noqa: E402
from frontier_records import RESULTS, bits, read_evaluation_record, record_path  # noqa: E402

DATASET = 'fashion_mnist'
RECORDS = os.path.join(ROOT, 'results', 'tune', DATASET)
#: checkpoints and gradreg-eval folders, out of git
WORK = os.path.join(ROOT, 'output', 'tune', DATASET)
#: the held-out images PGD-50 scores (its clean accuracy is on all 10,000)
VALIDATION_SAMPLES = 1000
SWEEP_SEED = 0
#: the training ε of the attack methods' grids (the frontier's 0.1 first)
ATTACK_EPS = ('0.1', '0.075', '0.125', '0.15')
#: method -> configurations: (label, timm-train flags added to the frontier's); the same number of distinct
#: trainings for each method, the recipe's configuration first. GradNorm's double-backprop penalty is
#: λ_GN·(ε/σ)·‖∇ₓL‖₁ (no threshold in the recipe), so only the product λ_GN·ε trains a different model: its grid is
#: four products, the recipe's 0.2 and ¾, ½, ¼ of it. AT's and FGSM-RS's step keeps the recipe's ratio to ε
#: (0.2/3 at 0.1: 2ε/3); N-FGSM's step and noise follow its ε.
GRIDS: Dict[str, List[Tuple[str, Tuple[str, ...]]]] = {
    'gradnorm': [(f'l{lam}-e{eps}', ('--gn-weight', lam, '--gn-eps', eps))
                 for lam, eps in (('2', '0.1'), ('1.5', '0.1'), ('1', '0.1'), ('1', '0.05'))],
    **{name: [(f'e{eps}', ('--attack-eps', eps, '--attack-step-size', f'{2 * float(eps):g}/3')) for eps in ATTACK_EPS]
       for name in ('pgd', 'fgsm')},
    'nfgsm': [(f'e{eps}', ('--nfgsm-eps', eps)) for eps in ATTACK_EPS],
}


def sweep_path(name: str, label: str, records: str = RECORDS) -> str:
    return os.path.join(records, f'{name}-{label}-s{SWEEP_SEED}.json')


def sweep_flags(name: str, extra: Tuple[str, ...]) -> List[str]:
    """A configuration's timm-train flags: the frontier's for the method, then the configuration's (last wins)."""
    return [*train_flags(BENCHMARKS[DATASET], name), *extra]


def validate(name: str, label: str, extra: Tuple[str, ...], work: str, quick: bool, records: str) -> dict:
    """Train one configuration on the held-in images and score it on the held-out ones; returns its record."""
    path = sweep_path(name, label, records)
    if os.path.exists(path):
        return json.load(open(path))
    flags = sweep_flags(name, extra)
    checkpoint = train_run([*flags, '--dataset', 'fashion_mnist_holdout'], SWEEP_SEED, work,
                           f'tune-{name}-{label}', quick)
    folder = os.path.join(work, 'eval', f'tune-{name}-{label}')
    samples = 16 if quick else VALIDATION_SAMPLES
    started = time.perf_counter()
    if not os.path.exists(os.path.join(folder, 'results.json')):
        os.makedirs(os.path.join(work, 'eval'), exist_ok=True)
        run([sys.executable, '-m', 'timm_gradreg.cli.evaluate', '--checkpoint', checkpoint, '--dataset',
             'fashion_mnist_holdout', '--split', 'validation', '--num-samples', str(samples), '--eps', '0',
             BENCHMARKS[DATASET].eps, '--steps', '5' if quick else '50', '--output', folder, '--no-progress',
             '--workers', '0', '--labels', name], folder + '.log')
    record = _sweep_record(folder, name, label, flags, time.perf_counter() - started)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(record, f, indent=1)
    return record


def _sweep_record(folder: str, name: str, label: str, flags: List[str], seconds: float) -> dict:
    import torch
    results = json.load(open(os.path.join(folder, 'results.json')))
    model = results['models'][0]
    per_image = torch.load(os.path.join(folder, f'flags_{model["label"]}.pt'))
    split = model['split']  # the clean pass over all 10,000 held-out images
    return {'record': 'validation', 'dataset': 'fashion_mnist_holdout', 'method': name, 'config': label,
            'seed': SWEEP_SEED, 'train_flags': [*flags, '--dataset', 'fashion_mnist_holdout'],
            'evaluation': {'eps': model['sweep']['eps'][-1], 'pgd_steps': model['sweep']['steps'],
                           'samples': model['num_samples'], 'split': 'validation (held out of train)'},
            'indices': [int(i) for i in per_image['indices']], 'clean': bits(per_image['clean'].tolist()),
            'pgd': bits(per_image['sweep_robust'][-1].tolist()),
            'accuracy': {'clean_all': split['clean_accuracy'], 'pgd': model['sweep']['accuracy'][-1]},  # in %
            'seconds': seconds}


def score(record: dict) -> float:
    """The choice rule: the mean of the held-out clean accuracy (all 10,000) and PGD-50 accuracy (the 1,000)."""
    return (record['accuracy']['clean_all'] + record['accuracy']['pgd']) / 2


def choose(name: str, records: str = RECORDS) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """The method's chosen configuration, once every configuration of its grid has its record (else None)."""
    paths = [(label, extra, sweep_path(name, label, records)) for label, extra in GRIDS[name]]
    if not all(os.path.exists(p) for _, _, p in paths):
        return None
    label, extra, _ = max(paths, key=lambda t: score(json.load(open(t[2]))))
    return label, extra


def tuned_flags(name: str, records: str = RECORDS) -> Optional[List[str]]:
    """The timm-train flags of the method's tuned row: its chosen configuration, once the sweep is complete and the
    choice is not the recipe's (where the recipe's configuration wins, the recipe rows are the answer)."""
    chosen = choose(name, records)
    if chosen is None or chosen[0] == GRIDS[name][0][0]:
        return None
    return sweep_flags(name, chosen[1])


def train_tuned(name: str, seed: int, work: str = WORK, quick: bool = False, records: str = RECORDS) -> str:
    """The tuned row's checkpoint at ``seed``, trained on the whole training set (kept once trained)."""
    flags = tuned_flags(name, records)
    if flags is None:
        raise SystemExit(f'{name} has no tuned row: its sweep is incomplete or the recipe\'s configuration won')
    return train_run(flags, seed, work, f'{name}{TUNED}-s{seed}', quick)


def tuned_runs(name: str, work: str, quick: bool, records: str, frontier_records: str) -> None:
    """The chosen configuration at the frontier's seeds, evaluated as the frontier's runs (its records sit beside
    the recipe rows')."""
    flags = tuned_flags(name, records)
    if flags is None:
        return
    bench = BENCHMARKS[DATASET]
    for seed in ((0,) if quick else bench.seeds):
        samples = 16 if quick else bench.samples
        path = record_path(DATASET, name + TUNED, seed, samples, frontier_records)
        if os.path.exists(path):
            trained_flags = read_evaluation_record(path)['train_flags']
            if trained_flags != flags:
                raise SystemExit(f'{path} trained {trained_flags}, but the sweep now chooses {flags}: delete the '
                                 f'{name}{TUNED} records and {work}/runs/{name}{TUNED}-s*, then rerun')
        else:
            checkpoint = train_tuned(name, seed, work, quick, records)
            evaluate(bench, name + TUNED, seed, checkpoint, work, samples, quick, frontier_records, flags=flags)


def report(records: str = RECORDS, frontier_records: str = RESULTS) -> str:
    """The sweep so far, each method's choice, and the tuned rows' test figures, as a markdown table."""
    lines = ['| method | configuration | held-out clean (10,000) | held-out PGD-50 (1,000) | score |',
             '|---|---|---|---|---|']
    for name, grid in GRIDS.items():
        chosen = choose(name, records)
        for label, _ in grid:
            path = sweep_path(name, label, records)
            if os.path.exists(path):
                r = json.load(open(path))
                mark = ' (chosen)' if chosen and chosen[0] == label else ''
                lines.append(f"| {name} | {label}{mark} | {r['accuracy']['clean_all']:.1f} | "
                             f"{r['accuracy']['pgd']:.1f} | {score(r):.1f} |")
    tuned = []
    for name in GRIDS:
        for seed in BENCHMARKS[DATASET].seeds:
            path = record_path(DATASET, name + TUNED, seed, BENCHMARKS[DATASET].samples, frontier_records)
            if os.path.exists(path):
                acc = read_evaluation_record(path)['accuracy']
                tuned.append(f"| {name}{TUNED} | s{seed} | {acc['clean']:.1f} | {acc['autoattack']:.1f} |")
    if tuned:
        lines += ['', '| run | seed | test clean (500) | test AutoAttack (500) |', '|---|---|---|---|', *tuned]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--methods', nargs='+', default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument('--work', default=WORK, help='checkpoints and gradreg-eval folders, out of git')
    parser.add_argument('--records', default=RECORDS)
    parser.add_argument('--frontier-records', default=RESULTS)
    parser.add_argument('--quick', action='store_true', help='2 epochs, 16 images, PGD-5, one tuned seed')
    parser.add_argument('--report', action='store_true', help='print the sweep and the choices; train nothing')
    args = parser.parse_args(argv)
    if not args.report:
        missing = [name for name in args.methods if name not in METHODS]
        if missing:
            raise SystemExit(f'not frontier methods: {missing}')
        for name in args.methods:
            for label, extra in GRIDS[name]:
                validate(name, label, extra, args.work, args.quick, args.records)
            tuned_runs(name, args.work, args.quick, args.records, args.frontier_records)
    print(report(args.records, args.frontier_records))
    return 0


if __name__ == '__main__':
    sys.exit(main())
