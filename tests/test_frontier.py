"""The frontier benchmark's smoke test: --quick trains, evaluates, times and writes its three outputs."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_frontier_writes_json_markdown_and_plot(tmp_path):
    pytest.importorskip('pyautoattack')
    pytest.importorskip('matplotlib')
    out = tmp_path / 'frontier'
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'frontier.py'), '--quick', '--methods',
                          'natural', 'gradnorm-every2', '--output', str(out)], capture_output=True, text=True,
                         timeout=900, env={**os.environ, 'TIMM_GRADREG_DATA': str(tmp_path / 'data')})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.load(open(out / 'frontier.json'))
    assert set(data['methods']) == {'natural', 'gradnorm-every2'} and data['seeds'] == [0]
    for method in data['methods'].values():
        assert 0 <= method['autoattack']['mean'] <= method['pgd50']['mean'] + 1e-9 <= 100.0 + 1e-9
        assert method['cost_ratio'] is None and method['cost_ratio_demo'] > 0 and method['passes'] > 0
    assert data['methods']['natural']['passes'] == 2 and data['methods']['gradnorm-every2']['passes'] == 3.5
    assert (out / 'frontier.png').stat().st_size > 1000
    assert '| gradnorm-every2 |' in (out / 'frontier.md').read_text()
    # resumable: a second run redoes nothing and gives the same scores
    again = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'frontier.py'), '--quick', '--methods',
                            'natural', 'gradnorm-every2', '--output', str(out)], capture_output=True, text=True,
                           timeout=300, env={**os.environ, 'TIMM_GRADREG_DATA': str(tmp_path / 'data')})
    assert again.returncode == 0 and '$ ' not in again.stdout
    assert json.load(open(out / 'frontier.json'))['methods'] == data['methods']
