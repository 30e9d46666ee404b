"""Evaluation outputs: JSON, CSV, a markdown report and the accuracy-vs-ε plot."""
import csv
from typing import Any, Dict, List, Sequence

from ..utils.files import write_json

__all__ = ['write_json', 'write_sweep_csv', 'plot_robust_curves', 'markdown_report']


def write_sweep_csv(path: str, models: List[Dict[str, Any]]) -> None:
    """One row per (model, ε): label, eps, eps_255, accuracy, samples."""
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['model', 'eps', 'eps_255', 'accuracy', 'num_samples'])
        for m in models:
            for eps, acc in zip(m['sweep']['eps'], m['sweep']['accuracy']):
                writer.writerow([m['label'], f'{eps:.6f}', f'{eps * 255:g}', f'{acc:.2f}', m['num_samples']])


def format_eps(eps: float, norm: str = 'Linf') -> str:
    """ε as the field writes it: in 255ths for L∞ ('4/255'), as the L2 length otherwise ('0.5')."""
    return f'{eps * 255:g}/255' if norm == 'Linf' else f'{eps:g}'


def plot_robust_curves(path: str, models: List[Dict[str, Any]], title: str = '') -> None:
    """Robust top-1 vs ε (in 1/255), one line per model (paper Fig. 2)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    norm = models[0]['sweep'].get('norm', 'Linf')
    for m in models:
        eps = [e * 255 if norm == 'Linf' else e for e in m['sweep']['eps']]
        ax.plot(eps, m['sweep']['accuracy'], marker='o', markersize=3, label=m['label'])
    ax.set_xlabel('ε (×1/255, L∞)' if norm == 'Linf' else f'ε ({norm} length, pixel units)')
    ax.set_ylabel('top-1 accuracy under PGD (%)')
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or 'Accuracy under PGD vs ε')
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return lines


def markdown_report(models: List[Dict[str, Any]], config: Dict[str, Any]) -> str:
    lines = ['# Robustness evaluation', '',
             f"{models[0]['num_samples']} samples of `{config['dataset'] or config['data_dir']}` "
             f"({config['split']}, subset seed {config['subset_seed']}); {config.get('norm', 'Linf')}, inputs in [0, 1], "
             'model in eval mode, fp32.', '']
    sweep_eps = next((m['sweep']['eps'] for m in models if 'sweep' in m), [])
    norm = config.get('norm', 'Linf')
    header = ['model', 'clean'] + [f'PGD ε={format_eps(e, norm)}' for e in sweep_eps if e > 0]
    with_aa = any(m.get('autoattack') for m in models)
    if with_aa:
        header.append('AutoAttack')
    rows = []
    for m in models:
        row = [m['label'], f"{m['clean_accuracy']:.2f}"]
        if 'sweep' in m:
            row += [f'{a:.2f}' for e, a in zip(m['sweep']['eps'], m['sweep']['accuracy']) if e > 0]
        else:
            row += ['—'] * sum(e > 0 for e in sweep_eps)
        if with_aa:
            runs = m.get('autoattack_by_eps') or ([m['autoattack']] if m.get('autoattack') else [])
            row.append('; '.join(f"{aa['robust_accuracy']:.2f} [{aa['ci95'][0]:.1f}, {aa['ci95'][1]:.1f}] "
                                 f"(ε={format_eps(aa['eps'], norm)})" for aa in runs) or '—')
        rows.append(row)
    lines += _table(header, rows)
    lines += ['', f"AutoAttack in brackets: the 95% Wilson interval of an accuracy on {models[0]['num_samples']} "
                  'samples (robust accuracies on a subset vary by that much from one subset to another).']
    if sweep_eps:
        lines += ['', f"PGD: {config['steps']} steps, step {config['step_size_factor']}·ε/steps, losses "
                      f"{', '.join(config['losses'])}, {config['restarts']} restart(s) each; a sample is robust "
                      'only if every attack fails.']
    lines.append('')
    for m in models:
        if not m.get('sanity'):
            continue
        lines += [f"## Gradient-masking checklist: {m['label']}", '', f"**Verdict: {m['sanity']['verdict']}**", '']
        lines += _table(['check', 'result', 'numbers', 'detail'], [
            [c['name'], {True: 'pass', False: '**FAIL**', None: 'skipped'}[c['passed']],
             ', '.join(f'{k}={v:.2f}' if isinstance(v, float) else f'{k}={v}' for k, v in c['numbers'].items()),
             c['detail']] for c in m['sanity']['checks']])
        lines.append('')
    return '\n'.join(lines) + '\n'
