"""Every published table, figure and measured number is its records rendered (benchmarks/publish.py)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

pytest.importorskip('matplotlib')
import publish  # noqa: E402


def test_every_published_file_is_what_its_records_make(capsys):
    assert publish.main(['--check']) == 0, capsys.readouterr().out


def test_a_hand_edit_is_found_and_named(monkeypatch, capsys):
    readme = os.path.join(ROOT, 'README.md')
    real = publish._read

    def edited(path):
        text = real(path)
        return text.replace('| pgd |', '| pgd (edited) |') if path == readme else text
    monkeypatch.setattr(publish, '_read', edited)
    assert publish.main(['--check']) == 1
    assert 'differs from its records: README.md' in capsys.readouterr().out


def test_a_file_without_its_markers_is_refused():
    with pytest.raises(ValueError, match='no generated block .frontier.'):
        publish.with_block('# text', 'frontier', 'table')


def test_the_frontier_table_and_figure_share_one_basis():
    """AutoAttack in the table, the ratios and the figure's 90% line: the same images for every model."""
    import json
    data = json.loads(publish.published()[os.path.join(ROOT, 'docs', 'frontier', 'frontier.json')])
    data = data['datasets']['fashion_mnist']
    n = {m['autoattack']['n'] for m in data['methods'].values()}
    assert len(n) == 1
    assert data['at_shared'] == pytest.approx(data['methods']['pgd']['autoattack']['mean'])
