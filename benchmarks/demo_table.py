"""The README's demo table, from records: each demo recipe trained once, its summary kept in results/demo/.

    python benchmarks/demo_table.py             # train the runs without a record (minutes), then write the table
    python benchmarks/demo_table.py --render    # only write the table into README.md from the records

Each run is `timm-train -c demo/...` with 2 threads and seed 42, as the README states; its record holds the
command, each epoch's row of summary.csv (clean and PGD-10 top-1 on the 359 validation digits, losses, epoch
times), the wall time, the machine and the software versions. The table gives the last epoch's accuracies with
their 95% Wilson intervals (docs/statistics.md) and the times relative to PGD-3 adversarial training.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from timm_gradreg.evaluate.interval import wilson_interval  # noqa: E402

RECORDS = os.path.join(ROOT, 'results', 'demo')
README = os.path.join(ROOT, 'README.md')
BEGIN, END = '<!-- demo: benchmarks/demo_table.py -->', '<!-- /demo -->'
#: run name -> (the README's label, timm-train options)
RUNS: Dict[str, tuple] = {
    'digits_natural': ('`digits_natural`', ['-c', 'demo/digits_natural']),
    'digits_gradnorm': ('`digits_gradnorm` (λ_GN 2)', ['-c', 'demo/digits_gradnorm']),
    'digits_gradnorm_fd': ('`digits_gradnorm --gn-impl fd`', ['-c', 'demo/digits_gradnorm', '--gn-impl',
                                                                     'fd']),
    'digits_advtrain': ('`digits_advtrain` (PGD-3)', ['-c', 'demo/digits_advtrain']),
}
REFERENCE = 'digits_advtrain'
SETTINGS = ['--threads', '2', '--seed', '42']
VALIDATION_DIGITS = 359


def train(name: str, work: str) -> dict:
    """One demo run through timm-train; its record."""
    import timm
    import torch

    import timm_gradreg
    argv = [*RUNS[name][1], *SETTINGS, '--output', work, '--experiment', name]
    started = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'timm_gradreg.cli.train', *argv], check=True, cwd=work,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    with open(os.path.join(work, name, 'summary.csv')) as f:
        epochs = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return {'record': 'demo run', 'run': name, 'command': ['timm-train', *argv[:-4]], 'epochs': epochs,
            'wall_seconds': wall, 'machine': f'{os.cpu_count()}-core CPU',
            'versions': {'torch': torch.__version__, 'timm': timm.__version__,
                         'timm_gradreg': getattr(timm_gradreg, '__version__', 'unknown')}}


def _accuracy(value: float) -> str:
    low, high = wilson_interval(value, VALIDATION_DIGITS)
    return f'{value:.2f} [{low:.1f}, {high:.1f}]'


def render(records: Dict[str, dict]) -> str:
    """The README's table (between its markers) from the records."""
    reference = records[REFERENCE]
    ref_wall, ref_train = reference['wall_seconds'], sum(e['train_time'] for e in reference['epochs'])
    lines = [BEGIN, f'{reference["machine"]}, 2 threads, seed 42; PGD-10 at ε 24/255 on {VALIDATION_DIGITS} '
                    'validation digits; [95% Wilson]:', '',
             '| recipe | clean top-1 | PGD-10 top-1 | wall time | training time |', '|---|---|---|---|---|']
    for name, (label, _) in RUNS.items():
        record = records[name]
        last = record['epochs'][-1]
        wall, training = record['wall_seconds'], sum(e['train_time'] for e in record['epochs'])
        relative = name != REFERENCE
        lines.append(f"| {label} | {_accuracy(last['eval_top1'])} | {_accuracy(last['eval_advtop1'])} | "
                     f"{wall:.0f} s{f' ({wall / ref_wall:.2f}×)' if relative else ''} | "
                     f"{training:.0f} s{f' ({training / ref_train:.2f}×)' if relative else ''} |")
    return '\n'.join([*lines, END])


def read_records(folder: str = RECORDS) -> Dict[str, dict]:
    return {name: json.load(open(os.path.join(folder, f'{name}.json'))) for name in RUNS
            if os.path.exists(os.path.join(folder, f'{name}.json'))}


def with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the demo table's markers replaced by ``table``."""
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + table + readme[end:]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--render', action='store_true', help='only write the table from the records')
    parser.add_argument('--records', default=RECORDS)
    args = parser.parse_args(argv)
    if not args.render:
        os.makedirs(args.records, exist_ok=True)
        for name in RUNS:
            path = os.path.join(args.records, f'{name}.json')
            if os.path.exists(path):
                continue
            with tempfile.TemporaryDirectory() as work:
                record = train(name, work)
            with open(path, 'w') as f:
                json.dump(record, f, indent=1)
            print(f'{name}: {record["epochs"][-1]["eval_top1"]:.2f} / {record["epochs"][-1]["eval_advtop1"]:.2f}',
                  flush=True)
    table = render(read_records(args.records))
    with open(README) as f:
        text = f.read()
    with open(README, 'w') as f:
        f.write(with_table(text, table))
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
