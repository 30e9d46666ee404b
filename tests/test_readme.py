"""The README's library example runs as printed, says what it does, and learns."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _library_example() -> str:
    text = open(os.path.join(ROOT, 'README.md')).read()
    section = text[text.index('## Library'):]
    return re.search(r'```python\n(.*?)```', section, re.S).group(1)


@pytest.mark.slow
def test_the_library_example_prints_its_progress_and_learns(tmp_path):
    env = {**os.environ, 'TIMM_GRADREG_DATA': str(tmp_path / 'data')}
    out = subprocess.run([sys.executable, '-c', _library_example()], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    epochs = re.findall(r'epoch (\d): loss ([\d.]+), CE ([\d.]+), penalty ([\d.]+)', out.stdout)
    assert [e[0] for e in epochs] == ['0', '1'], out.stdout
    assert float(epochs[1][2]) < float(epochs[0][2]) < 2.3  # CE falls below chance (ln 10 = 2.30) and keeps falling
