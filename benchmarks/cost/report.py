"""The printed tables: Table-3 step costs and first-order pass costs."""
from typing import Any, Dict, List

from .passes import PASSES

__all__ = ['format_table', 'format_passes']


def _header(result: Dict[str, Any]) -> str:
    return (f"{result['model']}{' (' + result['act'] + ')' if result['act'] else ''}, batch {result['batch_size']}, "
            f"{result['img_size']}px, {result['device']}, amp {result['amp']}, BatchNorm "
            f"{'train' if result['train_bn'] else 'eval'} mode"
            f"{', channels_last' if result.get('channels_last') else ''}"
            f"{', compile mode ' + result['torchcompile_mode'] if result.get('torchcompile_mode') else ''}, "
            f"torch {result['torch']}")


def format_passes(result: Dict[str, Any]) -> str:
    kinds = list(result['seconds'])
    speedups = result.get('compiled_over_eager')
    lines = [_header(result) + f": first-order passes, median ms of {result['rounds']} rounds",
             f"{'pass':<26}" + ''.join(f'{kind:>10}' for kind in kinds) + (f"{'c/e':>8}" if speedups else '')]
    for key, label in PASSES.items():
        lines.append(f'{label:<26}' + ''.join(f"{result['seconds'][kind][key] * 1000:>10.1f}" for kind in kinds)
                     + (f'{speedups[key]:>8.3f}' if speedups else ''))
    if speedups:
        lines.append('c/e: median of the round-by-round ratios compiled / eager')
    lines.append("gradnorm-fd floor, two training passes / PGD-3's passes (3 attack, 1 training): "
                 + ', '.join(f'{kind} {value:.3f}' for kind, value in result['floor'].items()))
    return '\n'.join(lines + _warmup_lines(result))


def _warmup_lines(result: Dict[str, Any]) -> List[str]:
    if result.get('steady') is None:
        return []
    return [f"warm-up: {result['warmup_rounds']} rounds, " + (
        'steady state (no step faulted in fresh memory)' if result['steady'] else
        'memory still growing at the end (raise --max-warmup): first-touch page faults inflate the times')]


def format_table(result: Dict[str, Any]) -> str:
    lines = [_header(result),
             f"{'method':<26}{'passes':>7}{'rel. AT':>9}{'s/step':>10}{'rel.':>8}{'rounds':>14}{'peak MB':>10}"
             f"{'mem/nat':>9}"]
    for r in result['rows']:
        mem = f"{r['peak_mb']:>10.0f}" if r.get('peak_mb') is not None else f"{'—':>10}"
        mrel = f"{r['mem_rel_natural']:>9.2f}" if r.get('mem_rel_natural') else f"{'—':>9}"
        ratio = f"{r['ratio']:>8.3f}" if r['ratio'] is not None else f"{'—':>8}"
        quartiles = r.get('ratio_quartiles')
        rounds = f"{quartiles[0]:>8.3f}–{quartiles[2]:.3f}" if quartiles else f"{'—':>14}"
        lines.append(f"{r['method']:<26}{r['passes']:>7}{r['passes_rel_at']:>9.3f}{r['seconds']:>10.4f}{ratio}"
                     f"{rounds}{mem}{mrel}")
    lines.append('rel.: median of the round-by-round ratios to PGD-3 of the same kind; '
                 'rounds: their interquartile range')
    for name, (q1, median, q3) in result.get('compiled_over_eager', {}).items():
        lines.append(f"{name} compiled / eager, round by round: median {median:.3f}, interquartile {q1:.3f}–{q3:.3f}"
                     f" ({'faster' if q3 < 1 else 'slower' if q1 > 1 else 'no clear difference'} compiled)")
    natural_row = next((r for r in result['rows'] if r['method'].startswith('natural')), None)
    if result.get('natural_eager_peak_mb') and natural_row and natural_row.get('peak_mb') is None:
        lines.append(f"mem/nat: relative to eager natural training, {result['natural_eager_peak_mb']:.0f} MB; "
                     'compiled steps have no CPU peak (RSS mixes in compilation)')
    lines += _warmup_lines(result)
    if 'fd_accuracy' in result:
        fd = result['fd_accuracy']
        lines.append(f"gradnorm-fd vs double backprop parameter gradient: cosine {fd['cosine']:.5f}, relative error "
                     f"{fd['rel_error']:.2e} (h = {fd['fd_step']})")
    return '\n'.join(lines)
