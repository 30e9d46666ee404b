"""The frontier's compact records: one committed JSON file per evaluation, in results/frontier/DATASET/.

A record holds what the published numbers are computed from, and nothing that only resumes a run: the run
(method, seed, the timm-train flags), the evaluation (dataset, ε, PGD steps, the seeded subset's image
indices), each image's result clean, under PGD and under AutoAttack (strings of '1' and '0' in index order),
the accuracies, the clean accuracy on the whole test split, and the software versions where the evaluation
kept them. gradreg-eval's folder (attack state, plots, logs) stays in the work folder, out of git.
"""
import json
import os
from typing import Any, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'results', 'frontier')

__all__ = ['RESULTS', 'record_path', 'write_evaluation_record', 'read_evaluation_record', 'scores', 'bits',
           'cost_record_path', 'write_cost_record', 'write_checks_record', 'write_analysis_record', 'run_record_path',
           'read_run_record']


def record_path(dataset: str, name: str, seed: int, samples: Optional[int], root: str = RESULTS) -> str:
    """Where the record of method ``name``, seed ``seed``, on ``samples`` images (None: the whole split) lives."""
    return os.path.join(root, dataset, 'eval', f'{name}-s{seed}-n{samples or "all"}.json')


def bits(flags: Sequence[Any]) -> str:
    """Per-image results as a string of '1' (correct or robust) and '0'."""
    return ''.join('1' if bool(f) else '0' for f in flags)


def _versions() -> Dict[str, str]:
    import timm
    import torch

    import timm_gradreg
    return {'torch': torch.__version__, 'timm': timm.__version__,
            'timm_gradreg': getattr(timm_gradreg, '__version__', 'unknown')}


def write_evaluation_record(folder: str, dataset: str, name: str, seed: int, samples: Optional[int],
                            train_flags: Sequence[str], path: str, seconds: Optional[float] = None,
                            versions: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The record of the gradreg-eval output ``folder`` (results.json and the per-image flags), written to ``path``.

    ``versions``: the software the evaluation ran with (default: this process's, for an evaluation just run);
    ``seconds``: its wall time, where known.
    """
    import torch
    results = json.load(open(os.path.join(folder, 'results.json')))
    model = results['models'][0]
    flags = torch.load(os.path.join(folder, f'flags_{model["label"]}.pt'))
    config = results['config']
    record = {
        'record': 'evaluation', 'dataset': dataset, 'method': name, 'seed': seed, 'train_flags': list(train_flags),
        'evaluation': {'eps': model['autoattack']['eps'], 'pgd_steps': model['sweep']['steps'],
                       'pgd_losses': model['sweep']['losses'], 'pgd_restarts': model['sweep']['restarts'],
                       'autoattack': model['autoattack']['version'], 'samples': model['num_samples'],
                       'subset_seed': config.get('subset_seed'), 'split': config.get('split')},
        'indices': [int(i) for i in flags['indices']],
        'clean': bits(flags['clean'].tolist()),
        'pgd': bits(flags['sweep_robust'][-1].tolist()),
        'autoattack': bits(flags['aa_robust'].tolist()),
        'accuracy': {'clean': model['clean_accuracy'], 'pgd': model['sweep']['accuracy'][-1],
                     'autoattack': model['autoattack']['robust_accuracy'],
                     'autoattack_after_each': model['autoattack'].get('after_each_attack')},
        'split': model.get('split'),  # the clean accuracy on the whole test split, where it was computed
        'seconds': seconds,
        'versions': versions if versions is not None else _versions(),
    }
    _write(record, path)
    return record


def write_checks_record(folder: str, dataset: str, name: str, seed: int, train_flags: Sequence[str], path: str,
                        seconds: Dict[str, float]) -> Dict[str, Any]:
    """The record of a gradreg-eval --sanity folder: every check's figures and verdict, the clean accuracy on the
    checked images and on the whole test split, the wall times of training and checking."""
    results = json.load(open(os.path.join(folder, 'results.json')))
    model = results['models'][0]
    sanity = model['sanity']
    record = {
        'record': 'checks', 'dataset': dataset, 'method': name, 'seed': seed, 'train_flags': list(train_flags),
        'evaluation': {'eps': sanity['eps'], 'samples': sanity['num_samples'],
                       'subset_seed': results['config'].get('subset_seed'),
                       'source': results['config'].get('source_checkpoint') and 'natural'},
        'clean': model['clean_accuracy'],
        'split': model.get('split'),
        'verdict': sanity['verdict'],
        'checks': sanity['checks'],
        'seconds': seconds,
        'versions': _versions(),
    }
    _write(record, path)
    return record


def write_analysis_record(folder: str, dataset: str, name: str, seed: int, train_flags: Sequence[str], path: str,
                          seconds: float) -> Dict[str, Any]:
    """The record of a gradreg-analyze folder: the paper's Tables 1, 5, 6 and 7 for one model."""
    results = json.load(open(os.path.join(folder, 'analysis.json')))
    config = results['config']
    (tables,) = results['models'].values()
    record = {
        'record': 'analysis', 'dataset': dataset, 'method': name, 'seed': seed, 'train_flags': list(train_flags),
        'evaluation': {'eps': config['analysis']['eps'], 'samples': config['num_samples'],
                       'subset_seed': config['subset_seed'], 'pgd_steps': config['analysis']['pgd_steps']},
        'tables': {k: v for k, v in tables.items() if k != 'fig11_path'},
        'seconds': seconds,
        'versions': _versions(),
    }
    _write(record, path)
    return record


def _write(record: Dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:  # a key a line, each value compact: small, and a change shows in a diff
        f.write('{\n' + ',\n'.join(f'{json.dumps(k)}: {json.dumps(v, separators=(",", ":"))}'
                                    for k, v in record.items()) + '\n}\n')


def cost_record_path(dataset: str, run: int, root: str = RESULTS) -> str:
    return os.path.join(root, dataset, 'cost', f'run-{run}.json')


def write_cost_record(output: str, path: str, options: Dict[str, List[str]]) -> Dict[str, Any]:
    """The record of one interleaved timing run (benchmarks/step_cost.py --interleave's JSON ``output``): per
    setting, its step_cost options and each method's round times, median and ratio to PGD-3."""
    result = json.load(open(output))['settings']
    names = {'main': 'trained'}
    record = {'record': 'cost', 'settings': {}}
    for key, setting in result.items():
        name = names.get(key, key)
        record['settings'][name] = {
            'options': options.get(name), 'device': setting['device'], 'torch': setting['torch'],
            'warmup_rounds': setting['warmup_rounds'], 'steady': setting['steady'],
            'rows': [{k: row[k] for k in ('method', 'passes', 'seconds', 'times', 'ratio', 'ratio_quartiles')}
                     for row in setting['rows']]}
    import torch
    record['machine'] = torch.cuda.get_device_name() if torch.cuda.is_available() else f'{os.cpu_count()}-core CPU'
    record['versions'] = _versions()
    _write(record, path)
    return record


def read_evaluation_record(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def scores(record: Dict[str, Any]) -> Dict[str, Any]:
    """A record as the frontier scores a run: accuracies and AutoAttack's per-image result by image index."""
    accuracy = record['accuracy']
    return {'seed': record['seed'], 'clean': accuracy['clean'], 'pgd50': accuracy['pgd'],
            'autoattack': accuracy['autoattack'], 'num_samples': record['evaluation']['samples'],
            'split_clean': (record.get('split') or {}).get('clean_accuracy'),
            'robust': {i: r == '1' for i, r in zip(record['indices'], record['autoattack'])},
            'pgd_flags': {i: r == '1' for i, r in zip(record['indices'], record['pgd'])},
            'clean_flags': {i: c == '1' for i, c in zip(record['indices'], record['clean'])}}


def run_record_path(dataset: str, kind: str, name: str, seed: int, root: str = RESULTS) -> str:
    """Where the ``kind`` ('checks' or 'analysis') record of method ``name``'s run ``seed`` lives."""
    return os.path.join(root, dataset, kind, f'{name}-s{seed}.json')


def read_run_record(dataset: str, kind: str, name: str, seed: int, root: str = RESULTS) -> Optional[Dict[str, Any]]:
    path = run_record_path(dataset, kind, name, seed, root)
    return read_evaluation_record(path) if os.path.exists(path) else None


def list_records(dataset: str, root: str = RESULTS) -> List[str]:
    folder = os.path.join(root, dataset, 'eval')
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith('.json')) \
        if os.path.isdir(folder) else []
