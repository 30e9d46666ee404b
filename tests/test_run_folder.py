"""A run never writes into another run's folder: finished runs and live ones are left alone."""
import os

import pytest

from timm_gradreg.cli.train import main as train_main
from timm_gradreg.train.output import LOCK_NAME, RunFolderError, claim_run_folder, release_run_folder

from helpers import tiny_train_argv, write_image_folder


def test_a_free_folder_is_taken_and_locked_by_this_process(tmp_path):
    folder, created = claim_run_folder(str(tmp_path), 'run')
    assert folder == str(tmp_path / 'run') and created
    assert open(os.path.join(folder, LOCK_NAME)).read() == str(os.getpid())
    release_run_folder(folder)
    assert not os.path.exists(os.path.join(folder, LOCK_NAME))


def test_a_finished_run_is_kept_and_the_new_one_takes_the_next_suffix(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'summary.csv').write_text('epoch\n0\n')
    (tmp_path / 'run-1').mkdir()
    (tmp_path / 'run-1' / 'last.pth.tar').write_bytes(b'x')
    folder, _ = claim_run_folder(str(tmp_path), 'run')
    assert folder == str(tmp_path / 'run-2')


def test_a_live_run_keeps_its_folder_and_a_dead_ones_lock_is_taken_over(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / LOCK_NAME).write_text(str(os.getppid()))  # a live process (pytest's parent)
    assert claim_run_folder(str(tmp_path), 'run')[0] == str(tmp_path / 'run-1')
    (tmp_path / 'run' / LOCK_NAME).write_text('999999999')  # no such process
    assert claim_run_folder(str(tmp_path), 'run')[0] == str(tmp_path / 'run')


def test_resuming_reuses_the_folder_unless_a_live_run_holds_it(tmp_path):
    (tmp_path / 'run').mkdir()
    checkpoint = tmp_path / 'run' / 'last.pth.tar'
    checkpoint.write_bytes(b'x')
    assert claim_run_folder(str(tmp_path), 'run', resume=str(checkpoint))[0] == str(tmp_path / 'run')
    (tmp_path / 'run' / LOCK_NAME).write_text(str(os.getppid()))
    with pytest.raises(RunFolderError, match=f'in use by the run of process {os.getppid()}'):
        claim_run_folder(str(tmp_path), 'run', resume=str(checkpoint))


def test_a_second_run_does_not_mix_with_the_first(tmp_path, caplog):
    data = write_image_folder(tmp_path / 'data', classes=4, train_per_class=2, val_per_class=1)
    argv = tiny_train_argv(data, tmp_path / 'out', 'run', '--epochs', '1')
    assert train_main(argv) == 0
    first = (tmp_path / 'out' / 'run' / 'summary.csv').read_text()
    assert train_main(argv) == 0
    assert (tmp_path / 'out' / 'run' / 'summary.csv').read_text() == first  # untouched
    assert len((tmp_path / 'out' / 'run-1' / 'summary.csv').read_text().splitlines()) == 2  # header + epoch 0
    assert 'holds an earlier run: this run writes to' in caplog.text
    assert not os.path.exists(tmp_path / 'out' / 'run-1' / LOCK_NAME)  # released at the end


@pytest.mark.parametrize('read_only, why', [(True, 'it is on a read-only file system'),
                                            (False, 'no permission to write there')])
def test_an_unwritable_output_is_refused_with_the_reason(read_only, why, tmp_path, monkeypatch):
    """Root may write anywhere, so the refusal is checked with os.access and statvfs answering as they do
    for another user's folder and for a read-only mount."""
    from timm_gradreg.utils.files import OutputPathError, check_output_path
    flags = os.statvfs(tmp_path).f_flag
    monkeypatch.setattr(os, 'access', lambda path, mode: False)
    monkeypatch.setattr(os, 'statvfs', lambda path: type('S', (), {'f_flag': flags | os.ST_RDONLY if read_only
                                                                    else flags & ~os.ST_RDONLY})())
    with pytest.raises(OutputPathError, match=f"--output '{tmp_path}/new': cannot write in '{tmp_path}' \\({why}\\)"):
        check_output_path(str(tmp_path / 'new'))
