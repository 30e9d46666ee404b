"""CPU threads: --threads and OMP_NUM_THREADS win, otherwise the cores that no other process keeps busy."""
import multiprocessing
import os
import time

import pytest
import torch

from timm_gradreg.utils.threads import busy_cores, choose_cpu_threads, set_cpu_threads


def _spin():
    while True:
        pass


def test_the_flag_wins(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert choose_cpu_threads(3) == (3, '--threads')


def test_omp_num_threads_is_respected(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert choose_cpu_threads() == (1, 'OMP_NUM_THREADS')


def test_set_cpu_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(1, log=False) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_busy_core_is_left_out(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    if busy_cores() is None:
        pytest.skip('no /proc/stat here')
    spinner = multiprocessing.Process(target=_spin, daemon=True)
    spinner.start()
    try:
        time.sleep(0.5)
        busy = busy_cores(0.5)
        threads, why = choose_cpu_threads()
    finally:
        spinner.terminate()
        spinner.join()
    assert busy >= 0.7, busy  # the spinner holds one core
    cores = len(os.sched_getaffinity(0))
    assert threads <= max(1, cores - 1), (threads, why)
    assert 'busy with other processes' in why


def test_the_published_timing_is_its_record_rendered():
    """docs/training.md's CPU-thread table is results/cpu_threads.json as the benchmark renders it."""
    import json
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, 'benchmarks'))
    from cpu_threads import format_table
    with open(os.path.join(root, 'results', 'cpu_threads.json')) as f:
        table = format_table(json.load(f))
    with open(os.path.join(root, 'docs', 'training.md')) as f:
        assert table in f.read()
