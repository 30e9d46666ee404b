"""CPU threads on a shared machine: one demo epoch with torch's default threads against the chosen ones.

    python benchmarks/cpu_threads.py             # a few minutes on 2 cores
    python benchmarks/cpu_threads.py --rounds 3

Each configuration runs ``timm-train -c demo/digits_gradnorm`` for one epoch (no validation) in a
fresh process and times the training epoch that timm-train reports, side by side in one run:

* an idle machine, the default threads (``utils.threads``: the cores no other process is busy on);
* another torch job busy on the machine with one thread, then with one thread per core, each
  time with torch's own default (one thread per core: ``--threads`` set to the core count, what
  every torch program does) and with the default threads.

The ratios compare each run with the idle one. Rounds repeat the configurations so the machine's
drift touches all alike; the median of the rounds is printed.
"""
import argparse
import csv
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional


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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--epochs', type=int, default=1, help='demo epochs per run (1)')
    parser.add_argument('--rounds', type=int, default=2, help='rounds of the configurations (2)')
    args = parser.parse_args(argv)
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
    idle = statistics.median(times['idle machine'])
    print(f'demo/digits_gradnorm, {args.epochs} epoch(s) per run, {args.rounds} round(s), {cores} cores; seconds of '
          'the training epochs, median [min, max] of the rounds (default threads: --threads not given):')
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f'  {name:<58} {seconds:6.1f} s [{min(values):.1f}, {max(values):.1f}]   {seconds / idle:5.2f}x idle')
    return 0


if __name__ == '__main__':
    sys.exit(main())
