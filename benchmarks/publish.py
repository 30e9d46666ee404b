"""Every published table, figure and measured number, from the committed records: one command.

    python benchmarks/publish.py            # rewrite the published files from results/
    python benchmarks/publish.py --check    # rewrite nothing; exit 1 naming each file that differs

The records live in results/ (one compact JSON file per training run, evaluation, checklist, analysis and
timing run); the published files are docs/frontier/ (frontier.md, .json, .png), docs/claims.md,
docs/compatibility.md, the generated blocks of README.md, docs/cost.md, docs/training.md, docs/scale.md and
docs/cost_robustness.md (between
``<!-- NAME: benchmarks/publish.py -->`` and ``<!-- /NAME -->``), and the ``# Measured:`` lines of the
Fashion-MNIST recipes. Nothing here trains, attacks or times: the studies that make the records are
benchmarks/frontier.py, frontier_checks.py, tune.py, demo_table.py, compat_matrix.py and cpu_threads.py. The test suite
runs ``--check`` (tests/test_publish.py).
"""
import argparse
import io
import json
import os
import re
import sys
import tempfile
from contextlib import redirect_stdout
from typing import Callable, Dict, List, Optional

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHMARKS)
sys.path.insert(0, BENCHMARKS)
sys.path.insert(0, ROOT)

import claims  # noqa: E402
import compat_matrix  # noqa: E402
import cpu_threads  # noqa: E402
import demo_table  # noqa: E402
import frontier  # noqa: E402
import memory_scale  # noqa: E402
import tune  # noqa: E402
from timm_gradreg.train.memory import TRANSIENT_FACTOR  # noqa: E402

DATASET = 'fashion_mnist'
#: the Fashion-MNIST recipes and the frontier method each one trains
RECIPES = {'natural': 'natural', 'gradnorm': 'gradnorm', 'advtrain': 'pgd'}
Texts = Dict[str, str]


def _path(*parts: str) -> str:
    return os.path.join(ROOT, *parts)


def _read(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


def with_block(text: str, name: str, block: str) -> str:
    """``text`` with its generated block ``name`` (between the markers, which stay) replaced by ``block``."""
    begin, end = f'<!-- {name}: benchmarks/publish.py -->', f'<!-- /{name} -->'
    if begin not in text or end not in text:
        raise ValueError(f'no generated block {name!r}: the file needs the markers {begin} and {end}')
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + '\n' + block.strip('\n') + '\n' + text[stop:]


def publish_frontier(out: Texts) -> Dict[str, bytes]:
    """docs/frontier/: the Fashion-MNIST frontier from its records (frontier.py --evaluated-only)."""
    with tempfile.TemporaryDirectory() as work:
        with redirect_stdout(io.StringIO()):
            frontier.main(['--dataset', DATASET, '--evaluated-only', '--output', work, '--work',
                           os.path.join(work, 'none')])
        for name in ('frontier.md', 'frontier.json'):
            out[_path('docs', 'frontier', name)] = _read(os.path.join(work, name))
        with open(os.path.join(work, 'frontier.png'), 'rb') as f:
            return {_path('docs', 'frontier', 'frontier.png'): f.read()}


def _frontier(out: Texts) -> dict:
    return json.loads(out[_path('docs', 'frontier', 'frontier.json')])['datasets'][DATASET]


def publish_claims(out: Texts) -> None:
    out[_path('docs', 'claims.md')] = claims.render(json.loads(out[_path('docs', 'frontier', 'frontier.json')]))


def _ratio(m: dict) -> str:
    r = m.get('ratio_to_at')
    return f"{r['mean']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if r else '—'


def frontier_block(data: dict) -> str:
    """The README's frontier table: whole-split clean, AutoAttack, ratio to AT, cost as trained."""
    methods = sorted(data['methods'].items(), key=lambda kv: frontier.trained_cost(kv[1]) or 0.0)
    n = next(iter(data['methods'].values()))['autoattack']['n']
    lines = [f"AutoAttack at ε {data['eps']} on the same {n} seeded test images for every model, "
             f"{len(data['methods']['pgd']['autoattack']['values'])} seeds; clean: whole test split; ratio to AT "
             f"[95%]; step cost vs PGD-3 as trained (median [range], {data['cost_runs']} timing runs, "
             f"{data['device']}):", '',
             '| method | clean | AutoAttack | ratio to AT [95%] | step cost |', '|---|---|---|---|---|']
    for name, m in methods:
        clean = m.get('split_clean')
        lines.append(f"| {name} | {clean['mean']:.1f} |" if clean else f'| {name} | — |')
        lines[-1] += (f" {m['autoattack']['mean']:.1f} ± {m['autoattack']['std']:.1f} | {_ratio(m)} | "
                      f"{frontier._cost_cell(m, 'trained')} |")
    target = data.get('target', {})
    met = [k for k, v in target.items() if v['robustness'] == 'above' and v['cost'] == 'within']
    undecided = [k for k, v in target.items() if k not in met and v['robustness'] != 'below']
    lines += ['', 'The target (≥ 90% of AT at ≤ 0.5× its step cost): '
              + (f"met by {', '.join(met)}" if met else 'met by no method')
              + (f"; not decidable for {', '.join(undecided)} (the interval spans 90%), so these are not ranked"
                 if undecided else '') + '.']
    return '\n'.join(lines)


#: the README's option table: (flags, meaning); {dest} is the option's default as timm-train's parser has it,
#: {task__dest} the default of that task's constructor (where tasks share the flag with different defaults)
OPTION_ROWS = (
    ('`--gradreg NAME`', 'the training method: {tasks}'),
    ('`--gn-ce-weight`, `--gn-weight`, `--gn-eps`, `--gn-sigma`',
     'GradNorm λ_CE, λ_GN ({gn_ce_weight}, {gn_weight}), ε ({gn_eps}), σ ({gn_sigma}, or `channel`)'),
    ('`--gn-warmup-epochs`, `--gn-inputs`, `--gn-impl`, `--gn-fd-step`',
     'λ_GN warm-up ({gn_warmup_epochs}, per iteration), penalty inputs ({gn_inputs}), {gn_impl} or fd '
     '(step {gn_fd_step})'),
    ('`--attack-eps`, `--attack-step-size`, `--attack-steps`, `--attack-warmup-epochs`, `--attack-algorithm`',
     'training attack of `pgd`/`fgsm` ({attack_eps}, {pgd_step_size}, {attack_steps}, {attack_warmup_epochs}, '
     '{attack_algorithm} or apgd)'),
    ('`--edge-teacher`, `--edge-sigma`, `--edge-temperature`, `--edge-cosine`, `--edge-weight-{{start,growth,cap}}`',
     'edge alignment ({edge_teacher}, {edge_sigma}, {edge_temperature}, {edge_cosine}, '
     '{edge_weight_start}/{edge_weight_growth}/{edge_weight_cap})'),
    ('`--swap-activations ACT`, `--bn-eval`', 'ReLU family → ACT before training; BatchNorm frozen in eval mode'),
    ('`--adv-val-steps`, `--adv-val-eps`, `--adv-val-step-size`',
     'robust validation, reported as `advtop1` ({adv_val_steps}, {adv_val_eps}, {adv_val_step_size})'),
    ('`--stop-epoch N`, `--dry-run [--world-size N]`',
     'stop after N epochs (continue with `--resume`); print the resolved config, exit'),
)


def options_block() -> str:
    """The README's option table, its defaults read from timm-train's parser and the tasks' constructors."""
    import inspect
    from timm_gradreg.tasks import get_task_class, list_tasks, task_options
    from timm_gradreg.tasks.adversarial import PGD_STEP_SIZE
    from timm_gradreg.tasks.options import format_default
    from timm_gradreg.train import build_parser
    defaults = {a.dest: a.default for a in build_parser()._actions}

    class Defaults(dict):
        def __missing__(self, key):
            if key == 'tasks':
                return ', '.join(list_tasks())
            if key == 'pgd_step_size':  # the pgd task's (None in its signature: apgd takes none)
                return format_default(PGD_STEP_SIZE)
            if '__' in key:
                task, dest = key.split('__')
                option = next(o for o in task_options(task) if o.dest == dest)
                cls = get_task_class(task)
                value = next(k.__init__ for k in cls.__mro__ if option.kwarg in inspect.signature(k.__init__).parameters)
                return format_default(inspect.signature(value).parameters[option.kwarg].default)
            value = defaults[key]
            return format_default(value) if not isinstance(value, str) else value
    lines = ['| option | meaning (default) |', '|---|---|']
    lines += [f'| {flags.format_map(Defaults())} | {meaning.format_map(Defaults())} |' for flags, meaning in OPTION_ROWS]
    return '\n'.join(lines)


def publish_readme(out: Texts) -> None:
    text = _read(_path('README.md'))
    text = demo_table.with_table(text, demo_table.render(demo_table.read_records()))
    text = with_block(text, 'options', options_block())
    out[_path('README.md')] = with_block(text, 'frontier', frontier_block(_frontier(out)))


def recipe_line(m: dict, eps: str) -> str:
    """A Fashion-MNIST recipe's ``# Measured:`` line, from its frontier method."""
    clean = m.get('split_clean')
    parts = [f"clean {clean['mean']:.1f} ± {clean['std']:.1f} on the whole test split" if clean else None,
             f"PGD-50 {m['pgd50']['mean']:.1f} ± {m['pgd50']['std']:.1f}",
             f"AutoAttack {m['autoattack']['mean']:.1f} ± {m['autoattack']['std']:.1f} at ε {eps} "
             f"({len(m['autoattack']['values'])} seeds, the frontier's {m['autoattack']['n']} test images)"]
    if m.get('ratio_to_at') and m['ratio_to_at']['mean'] < 0.995:
        parts.append(f'ratio to AT {_ratio(m)}')
    return ('# Measured: ' + ', '.join(p for p in parts if p)
            + '; generated by benchmarks/publish.py from results/frontier/fashion_mnist/.')


def publish_recipes(out: Texts) -> None:
    data = _frontier(out)
    for recipe, method in RECIPES.items():
        path = _path('recipes', 'fmnist', f'{recipe}.yaml')
        text = _read(path)
        out[path] = re.sub(r'^# Measured:.*$', lambda _: recipe_line(data['methods'][method], data['eps']), text,
                           count=1, flags=re.M)


def cost_block(data: dict) -> str:
    """docs/cost.md's table: every frontier method's step cost against PGD-3, both timed settings."""
    trained = ' '.join(frontier.BENCHMARKS[DATASET].trained)
    lines = [f"{data['cost_runs']} timing runs of `benchmarks/step_cost.py`, each timing the Fashion-MNIST "
             f"configuration (`{trained}`) and resnet50-GELU at 128 px (`{' '.join(frontier.PROXY)}`) in the "
             f"same interleaved rounds, on {data['device']}, float32, BatchNorm in eval mode; a step's time "
             'relative to PGD-3, the median run [the range of the runs] (records: '
             f'`results/frontier/{DATASET}/cost/`):', '',
             '| method | passes | as trained | resnet50-GELU 128 px |', '|---|---|---|---|']
    rows = {**data.get('timed_only', {}),
            **{n: m for n, m in data['methods'].items() if not n.endswith(frontier.TUNED)}}
    for name, m in sorted(rows.items(), key=lambda kv: frontier.trained_cost(kv[1]) or 0.0):
        lines.append(f"| {name} | {m.get('passes') or '—'} | {frontier._cost_cell(m, 'trained')} | "
                     f"{frontier._cost_cell(m, 'proxy')} |")
    lines += ['', "The paper's Table 3: GradNorm 0.628 of PGD-3 (Swin-B, 8 V100s)."]
    return '\n'.join(lines)


def publish_cost(out: Texts) -> None:
    out[_path('docs', 'cost.md')] = with_block(_read(_path('docs', 'cost.md')), 'cost', cost_block(_frontier(out)))


def publish_compatibility(out: Texts) -> None:
    with open(_path('results', 'compatibility.json')) as f:
        cells = [compat_matrix.Cell(**cell) for cell in json.load(f)['cells']]
    out[_path('docs', 'compatibility.md')] = compat_matrix.format_matrix(cells)


def publish_threads(out: Texts) -> None:
    with open(_path('results', 'cpu_threads.json')) as f:
        table = cpu_threads.format_table(json.load(f))
    out[_path('docs', 'training.md')] = with_block(_read(_path('docs', 'training.md')), 'threads', table)


def memory_block(record: dict) -> str:
    """docs/scale.md's check of the memory prediction: the table, and where the prediction's factor lies."""
    def ratios(double_backprop: bool) -> List[float]:
        return [(r['measured'][1] - r['measured'][0]) / r['saved_growth'] for r in record['checks']
                if ('gradnorm' in r['recipe']) == double_backprop]
    twice, once = ratios(True), ratios(False)
    text = memory_scale.check_table(record)
    if twice:
        text += (f"\nWith double backprop the ratios lie between {min(twice):.2f} and {max(twice):.2f}; the prediction "
                 f"multiplies the saved bytes by {TRANSIENT_FACTOR}")
        if max(twice) > TRANSIENT_FACTOR:
            text += (f", {max(twice) / TRANSIENT_FACTOR - 1:.0%} short of the largest: plan with that margin (a "
                     'smaller --gpu-memory)')
        text += (f"; for natural and adversarial training ({min(once):.2f}–{max(once):.2f}) the same factor makes it "
                 'conservative.' if once else '.')
    return text


def publish_memory(out: Texts) -> None:
    with open(_path('results', 'memory_checks.json')) as f:
        block = memory_block(json.load(f))
    out[_path('docs', 'scale.md')] = with_block(_read(_path('docs', 'scale.md')), 'memory', block)


def publish_sweep(out: Texts) -> None:
    """docs/cost_robustness.md's validation sweep: each configuration's held-out scores, the choices, the tuned runs."""
    path = _path('docs', 'cost_robustness.md')
    out[path] = with_block(_read(path), 'sweep', tune.report())


#: each publisher adds its files' new text to the dict (and returns binary files, not compared by --check);
#: later ones read what earlier ones wrote (the claims and the README read the frontier)
PUBLISHERS: Dict[str, Callable[[Texts], Optional[Dict[str, bytes]]]] = {
    'frontier': publish_frontier,
    'claims': publish_claims,
    'readme': publish_readme,
    'recipes': publish_recipes,
    'cost': publish_cost,
    'compatibility': publish_compatibility,
    'threads': publish_threads,
    'memory': publish_memory,
    'sweep': publish_sweep,
}


def published() -> Dict[str, object]:
    """Every published file's text (and the binary ones' bytes) as the records make it."""
    texts: Texts = {}
    binary: Dict[str, bytes] = {}
    for publish in PUBLISHERS.values():
        binary.update(publish(texts) or {})
    return {**texts, **binary}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='compare, write nothing; exit 1 when a file differs')
    args = parser.parse_args(argv)
    files = published()
    stale = [p for p, v in files.items() if isinstance(v, str) and (not os.path.exists(p) or _read(p) != v)]
    if args.check:
        for path in stale:
            print(f'differs from its records: {os.path.relpath(path, ROOT)}')
        return 1 if stale else 0
    for path, value in files.items():
        mode, kwargs = ('w', {'encoding': 'utf-8'}) if isinstance(value, str) else ('wb', {})
        with open(path, mode, **kwargs) as f:
            f.write(value)
    print('\n'.join(f'wrote {os.path.relpath(p, ROOT)}' for p in files))
    return 0


if __name__ == '__main__':
    sys.exit(main())
