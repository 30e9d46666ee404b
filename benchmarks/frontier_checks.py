"""Seed 0 of every frontier method (its kept run, else trained again), its gradient-masking checklist run, and the
input-gradient analysis of the natural, GradNorm and AT models: one committed record per run.

    python benchmarks/frontier_checks.py --dataset fashion_mnist                  # every method, in turn
    python benchmarks/frontier_checks.py --dataset fashion_mnist --methods pgd igr   # a second job beside it
    python benchmarks/frontier_checks.py --dataset fashion_mnist --methods gradnorm-tuned   # a tuned row's own run

Each run is the one benchmarks/frontier.py kept in the work folder, or trains as frontier.py trains it (the same
recipe, options and seed: its clean accuracy on the whole test split is compared with the frontier's record; a
tuned row's run is the one benchmarks/tune.py kept, or trains as tune.py trains it), then
``gradreg-eval --sanity`` runs the checklist of Carlini et al. (2019) on the first 200 of the frontier's seeded
test images at the frontier's ε, with the natural model of seed 0 as the transfer source. The record
(results/frontier/DATASET/checks/NAME-s0.json) holds every check's figures and verdict and the whole-split clean
accuracy. For natural, gradnorm and pgd, ``gradreg-analyze`` on 100 test images writes the paper's Tables 1, 5, 6
and 7 (results/frontier/DATASET/analysis/NAME-s0.json). Checkpoints and gradreg-eval folders stay in the work
folder, out of git. Resumable: a run whose record exists is skipped; two processes with disjoint --methods share
the work (one thread each). Where a check fails, the method's other seeds are trained again and checked too.
"""
import argparse
import json
import os
import shutil
import sys
import time
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tune  # noqa: E402
from frontier import BENCHMARKS, METHODS, ROOT, TUNED, base_method, eval_folder, evaluate, run, train  # noqa: E402
from frontier import train_flags  # noqa: E402
from frontier_records import RESULTS, read_evaluation_record, read_run_record, record_path, run_record_path  # noqa: E402
from frontier_records import write_analysis_record, write_checks_record  # noqa: E402

#: the models whose input gradients the paper characterizes: natural, the regularized and the adversarial one
ANALYSED = ('natural', 'gradnorm', 'pgd')
#: the transfer check's source model: the natural model of seed 0 (for every run checked)
SOURCE, SOURCE_SEED = 'natural', 0
CHECK_SAMPLES = 200
ANALYSIS_SAMPLES = 100


def wait_for(checkpoint: str, poll: float = 60.0) -> None:
    """Wait until another process has finished training the transfer source."""
    while not os.path.exists(os.path.join(os.path.dirname(checkpoint), 'done')):
        time.sleep(poll)


def trained(bench, name: str, seed: int, work: str) -> Tuple[str, List[str]]:
    """The run's checkpoint and timm-train flags: a frontier method's kept run, else trained again as the frontier
    trains it; a tuned row's the run its evaluation record is of (tune.py keeps it; a fresh clone trains it)."""
    if name.endswith(TUNED):
        base = base_method(name)
        return tune.train_tuned(base, seed), tune.tuned_flags(base)
    return train(bench, name, seed, work, quick=False), train_flags(bench, name)


def check_run(bench, name: str, seed: int, work: str, records: str) -> None:
    path = run_record_path(bench.key, 'checks', name, seed, records)
    analysis = run_record_path(bench.key, 'analysis', name, seed, records)
    if os.path.exists(path) and (name not in ANALYSED or os.path.exists(analysis)):
        return
    started = time.perf_counter()
    checkpoint, flags = trained(bench, name, seed, work)
    train_seconds = time.perf_counter() - started
    source = os.path.join(work, 'runs', f'{SOURCE}-s{SOURCE_SEED}', 'last.pth.tar')
    if name != SOURCE:
        wait_for(source)
    if not os.path.exists(path):
        folder = os.path.join(work, 'checks', f'{name}-s{seed}')
        cmd = [sys.executable, '-m', 'timm_gradreg.cli.evaluate', '--checkpoint', checkpoint, '--dataset',
               bench.eval_dataset, '--no-sweep', '--sanity', '--aa-eps', bench.eps, '--num-samples',
               str(CHECK_SAMPLES), '--output', folder, '--no-progress', '--workers', '0', '--labels', name]
        if name != SOURCE:
            cmd += ['--source-checkpoint', source]
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        started = time.perf_counter()
        run(cmd, folder + '.log')
        write_checks_record(folder, bench.key, name, seed, flags, path,
                            {'train': train_seconds, 'checks': time.perf_counter() - started})
    reevaluate(bench, name, seed, checkpoint, work, records)
    if name in ANALYSED and not os.path.exists(analysis):
        folder = os.path.join(work, 'analysis', f'{name}-s{seed}')
        cmd = [sys.executable, '-m', 'timm_gradreg.cli.analyze', '--checkpoint', checkpoint, '--dataset',
               bench.eval_dataset, '--eps', bench.eps, '--num-samples', str(ANALYSIS_SAMPLES), '--output', folder,
               '--no-progress', '--workers', '0', '--labels', name]
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        started = time.perf_counter()
        run(cmd, folder + '.log')
        write_analysis_record(folder, bench.key, name, seed, flags, analysis,
                              time.perf_counter() - started)


def flagged(dataset: str, name: str, seed: int, records: str) -> bool:
    """Whether a check failed in the run's checklist record."""
    record = read_run_record(dataset, 'checks', name, seed, records)
    return record is not None and any(c['passed'] is False for c in record['checks'])


def reevaluate(bench, name: str, seed: int, checkpoint: str, work: str, records: str) -> None:
    """An evaluation record without the whole-split clean accuracy (nor a larger sample's record with it) is
    replaced by the evaluation of this retraining (clean, PGD-50 and AutoAttack as the frontier evaluates, and
    the whole split): retraining on a CPU does not give the same weights, so the old run's figure cannot be
    completed from the new one."""
    path = record_path(bench.key, name, seed, bench.samples, records)
    larger = record_path(bench.key, name, seed, bench.samples_near, records)
    if not os.path.exists(path) or any(os.path.exists(p) and read_evaluation_record(p).get('split')
                                       for p in (path, larger)):
        return
    folder = eval_folder(work, name, seed, bench.samples)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.remove(path)
    evaluate(bench, name, seed, checkpoint, work, bench.samples, False, records)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', default='fashion_mnist', choices=list(BENCHMARKS))
    parser.add_argument('--methods', nargs='+', default=list(METHODS),
                        choices=[*METHODS, *(name + TUNED for name in tune.GRIDS)],
                        help='frontier methods, or tuned rows (Fashion-MNIST: benchmarks/tune.py) such as gradnorm-tuned')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work', default=None, help='checkpoints and tool folders (default: output/frontier/DATASET)')
    parser.add_argument('--records', default=RESULTS)
    args = parser.parse_args(argv)
    bench = BENCHMARKS[args.dataset]
    tuned = [name for name in args.methods if name.endswith(TUNED)]
    if tuned and bench.key != tune.DATASET:
        parser.error(f'tuned rows {tuned} exist for --dataset {tune.DATASET} only, not {bench.key}')
    work = args.work or os.path.join(ROOT, 'output', 'frontier', bench.key)
    for name in args.methods:
        check_run(bench, name, args.seed, work, args.records)
        if flagged(bench.key, name, args.seed, args.records):  # a flag: the checklist on the other seeds too
            for seed in bench.seeds:
                if seed != args.seed:
                    check_run(bench, name, seed, work, args.records)
        print(json.dumps({'done': name}), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
