"""benchmarks/gpu_check.py, the GPU acceptance run, works end to end: its --smoke run on the CPU (tiny sizes)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'gpu_check.py')


def test_the_smoke_run_covers_every_section_and_passes(tmp_path):
    report = tmp_path / 'gpu.md'
    run = subprocess.run([sys.executable, SCRIPT, '--smoke', '--output', str(report)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=900, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert run.returncode == 0, run.stderr[-3000:]
    text = report.read_text()
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    from gpu_check import KERNEL_CASES, STEP_METHODS
    kernel_rows = [line for line in text.splitlines() if any(line.startswith(f'| {c.name} |') for c in KERNEL_CASES)]
    assert len(kernel_rows) == len(KERNEL_CASES) and all(line.endswith('| ✓ |') for line in kernel_rows)  # each op
    for method in STEP_METHODS:
        assert text.count(f'| {method} |') == 4  # 2 models x 2 precisions
    assert '| imagenet/resnet50_gelu_gradnorm | 2 |' in text
    recipe_rows = [line for line in text.splitlines() if line.startswith('| imagenet/') and '| yes |' in line]
    assert len(recipe_rows) == 1 and '| 0 |' in recipe_rows[0]


def test_without_a_gpu_it_says_so_in_one_line():
    import torch
    if torch.cuda.is_available():
        return
    run = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and 'no CUDA device here' in run.stderr.strip().splitlines()[-1]
