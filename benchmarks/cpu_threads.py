"""CPU threads on a shared machine: one demo epoch with torch's default threads against the chosen ones.

    python benchmarks/cpu_threads.py                 # about 5 minutes on 2 cores; writes results/cpu_threads.json
    python benchmarks/cpu_threads.py --from-record   # the table of docs/training.md, from the record

Each configuration runs ``timm-train -c demo/digits_gradnorm`` for one epoch (no validation) in a
fresh process and times the training epoch that timm-train reports, side by side in one run:

* an idle machine, the default threads (``utils.threads``: the cores no other process is busy on);
* another torch job busy on the machine with one thread, then with one thread per core, each
  time with torch's own default (one thread per core: ``--threads`` set to the core count, what
  every torch program does) and with the default threads.

The ratios compare each configuration's mean with the idle one's. Rounds repeat the configurations so
the machine's drift touches all alike; each mean comes with its 95% t interval over the rounds.
"""
import argparse
import csv
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

RECORD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results', 'cpu_threads.json')


def _other_job(threads: int) -> None:
    """Another training job on the machine, busy without pause on ``threads`` torch threads."""
    import torch
    torch.set_num_threads(threads)
    a = torch.randn(256, 256)
    while True:
        a = torch.tanh(a @ a)


def _epoch_seconds(threads: Optional[int], epochs: int, work: str) -> float:
    """Seconds of the training epochs of one demo run (the 'time' column of its summary.csv)."""
    output = tempfile.mkdtemp(dir=work)
    argv = [sys.executable, '-m', 'timm_gradreg.cli.train', '-c', 'demo/digits_gradnorm', '--epochs', str(epochs),
            '--warmup-epochs', '0', '--val-split', '', '--eval-metric', 'loss', '--adv-val-steps', '0',
            '--output', output, '--experiment', 'run']
    if threads:
        argv += ['--threads', str(threads)]
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(output, 'run', 'summary.csv')) as f:
        return sum(float(row['train_time']) for row in csv.DictReader(f))


#: two-sided 95% Student t quantiles by degrees of freedom (the rounds less one)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def format_table(record: Dict) -> str:
    """The markdown table of a record: per configuration the mean training seconds of the rounds with a 95%
    t interval, and the ratio of the means to the idle machine."""
    idle = statistics.mean(record['times']['idle machine'])
    lines = [f"demo/digits_gradnorm, one epoch per run, {record['rounds']} rounds, {record['cores']} cores, torch "
             f"{record['torch']}: training seconds, mean [95% t interval] of the rounds",
             '', '| configuration | seconds | × idle |', '|---|---|---|']
    for name, values in record['times'].items():
        mean = statistics.mean(values)
        half = _T95[len(values) - 1] * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        lines.append(f'| {name} | {mean:.1f} [{mean - half:.1f}, {mean + half:.1f}] | {mean / idle:.2f} |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--epochs', type=int, default=1, help='demo epochs per run (1)')
    parser.add_argument('--rounds', type=int, default=3, help='rounds of the configurations (3)')
    parser.add_argument('--record', default=RECORD, help='where the per-round times go (results/cpu_threads.json)')
    parser.add_argument('--from-record', action='store_true', help='print the table of --record without measuring')
    args = parser.parse_args(argv)
    if args.from_record:
        with open(args.record) as f:
            print(format_table(json.load(f)), end='')
        return 0
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    configs = [('idle machine', 0, None)]
    for other in (1, cores):
        configs += [(f'other job on {other} thread(s), {cores} threads (torch default)', other, cores),
                    (f'other job on {other} thread(s), default threads', other, None)]
    times: Dict[str, List[float]] = {name: [] for name, _, _ in configs}
    with tempfile.TemporaryDirectory() as work:
        _epoch_seconds(None, 1, work)  # builds the demo data and warms the file cache
        for _ in range(args.rounds):
            for name, other, threads in configs:
                job = None
                if other:
                    job = multiprocessing.Process(target=_other_job, args=(other,), daemon=True)
                    job.start()
                    time.sleep(1.0)
                try:
                    times[name].append(_epoch_seconds(threads, args.epochs, work))
                finally:
                    if job is not None:
                        job.terminate()
                        job.join()
    record = {'rounds': args.rounds, 'epochs': args.epochs, 'cores': cores, 'torch': torch.__version__,
              'times': times}
    os.makedirs(os.path.dirname(args.record), exist_ok=True)
    with open(args.record, 'w') as f:
        json.dump(record, f, indent=1)
    print(format_table(record), end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
