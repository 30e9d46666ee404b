"""gradreg-eval: PGD sweeps, AutoAttack adapter, gradient-masking checklist, CLI, distributed."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from timm_gradreg.cli.evaluate import main as eval_main
from timm_gradreg.evaluate import (PGDSweepConfig, SanityContext, create_pixel_dataset, create_pixel_loader,
                                   load_batches, masking_verdict, pgd_sweep, run_autoattack, run_sanity_checks,
                                   subset_indices)
from timm_gradreg.models.loading import load_eval_model
from timm_gradreg.core.normalization import normalized_model
from timm_gradreg.train import Trainer, parse_args

from helpers import write_image_folder

FAST_CHECKS = ['steps_converge', 'unbounded_eps', 'iterative_beats_single_step', 'transfer_weaker',
               'l2_direction_weaker', 'zero_gradients']


@pytest.fixture(scope='module')
def natural_checkpoint(tmp_path_factory):
    """A test_resnet (GELU) trained naturally for 6 epochs on the digits demo data."""
    out = tmp_path_factory.mktemp('nat')
    data = tmp_path_factory.mktemp('digits') / 'digits'
    args, text = parse_args(['-c', 'demo/digits_natural', '--data-dir', str(data), '--epochs', '6', '--warmup-epochs', '0',
                             '--output', str(out), '--experiment', 'natural', '--adv-val-steps', '0',
                             '--eval-metric', 'top1', '--device', 'cpu', '--log-interval', '100'])
    Trainer(args, text).fit()
    return str(out / 'natural' / 'last.pth.tar'), str(data)


@pytest.fixture(scope='module')
def honest(natural_checkpoint):
    ckpt, data = natural_checkpoint
    model, cfg = load_eval_model(ckpt)
    pixel_model = normalized_model(model, cfg['mean'], cfg['std']).eval()
    dataset = create_pixel_dataset('demo/digits', data, 'validation', cfg)
    loader, _ = create_pixel_loader(dataset, subset_indices(len(dataset), 60, 0), 60)
    x, y = load_batches(loader, torch.device('cpu'))
    return pixel_model, loader, x, y


def test_subset_is_fixed_and_reproducible():
    a = subset_indices(1000, 50, seed=0)
    assert a == subset_indices(1000, 50, seed=0) and a == sorted(a) and len(set(a)) == 50
    assert a != subset_indices(1000, 50, seed=1)
    assert subset_indices(10, None) == list(range(10))


def test_the_seeded_subset_is_a_uniform_sample():
    # each of 359 images is drawn with probability 100/359 under every seed: over 2,000 seeds the counts are
    # Binomial(2000, 0.279), mean 557, sd 20; all 359 within 5 sd, and the chi-square of the counts near its df
    import numpy as np
    counts = np.zeros(359)
    for seed in range(2000):
        counts[subset_indices(359, 100, seed)] += 1
    p = 100 / 359
    mean, sd = 2000 * p, (2000 * p * (1 - p)) ** 0.5
    assert np.abs(counts - mean).max() < 5 * sd
    chi2 = (((counts - mean) / sd) ** 2).sum()
    assert 359 - 6 * (2 * 359) ** 0.5 < chi2 < 359 + 6 * (2 * 359) ** 0.5


def test_official_subset_is_the_official_list_and_names_what_is_missing(tmp_path, monkeypatch):
    from PIL import Image

    import timm_gradreg.evaluate.data as data
    # the official repository's src_data/val.txt: 5,000 'class_folder/file label' lines, the first two these
    lines = open(data.OFFICIAL_VAL_LIST).read().splitlines()
    assert len(lines) == 5000 and len(set(lines)) == 5000
    assert lines[:2] == ['n09468604/ILSVRC2012_val_00015253.JPEG 979', 'n02823750/ILSVRC2012_val_00020685.JPEG 441']
    official = [line.split()[0] for line in lines[:3]]
    for name in official + ['n01440764/ILSVRC2012_val_00000293.JPEG', 'n09468604/ILSVRC2012_val_00000001.JPEG']:
        path = tmp_path / 'validation' / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (8, 8)).save(path, format='JPEG')
    cfg = {'input_size': (3, 8, 8), 'interpolation': 'bilinear', 'crop_pct': 1.0}
    dataset = create_pixel_dataset('', str(tmp_path), 'validation', cfg)
    with pytest.raises(ValueError, match='4997 of the 5000 images of the official list are not in the data folder'):
        data.select_indices(dataset, 'official', None)
    short = tmp_path / 'list.txt'
    short.write_text(''.join(line + '\n' for line in lines[:3]))
    monkeypatch.setattr(data, 'OFFICIAL_VAL_LIST', str(short))
    chosen = data.select_indices(dataset, 'official', None)
    paths = [dataset.reader.samples[i][0].replace(os.sep, '/') for i in chosen]
    assert sorted(p.split('/validation/')[1] for p in paths) == sorted(official)
    assert data.select_indices(dataset, 'robustbench', None) == chosen


def test_the_official_list_is_robustbenchs():
    """The paper's list is RobustBench's ImageNet list (robustbench/helper_files/imagenet_test_image_ids.txt at
    78fcc9e4: its file names, in order, hash to this; its last line is this)."""
    import hashlib

    import timm_gradreg.evaluate.data as data
    names = [line.split()[0] for line in open(data.OFFICIAL_VAL_LIST).read().splitlines()]
    assert names[-1] == 'n13133613/ILSVRC2012_val_00025432.JPEG'
    assert hashlib.sha256('\n'.join(names).encode()).hexdigest() == \
        'd4121626d07722a0126c35b1563042e46a546f1a05ce705f2cdc635896d58574'


def test_natural_model_sweep(honest):
    model, loader, x, y = honest
    eps = [0, 2 / 255, 8 / 255, 24 / 255, 64 / 255, 128 / 255]
    sweep = pgd_sweep(model, loader, PGDSweepConfig(eps=eps, steps=10), show_progress=False)
    acc = sweep.accuracy()
    values = [acc[e] for e in sorted(acc)]
    assert sweep.clean_accuracy() > 80
    assert values[0] == pytest.approx(sweep.clean_accuracy())  # ε = 0 is the clean point
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone non-increasing
    assert values[-1] <= 1.0  # a large ε breaks a naturally trained model
    assert values[1] > values[-1]


class QuantizedInput(nn.Module):
    """Planted gradient masking: inputs rounded to 4 gray levels (zero gradient almost everywhere)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


class DetachedPreprocessing(nn.Module):
    """Planted gradient masking: a preprocessing step cut out of the autograd graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.detach() * 1.0)


@pytest.mark.parametrize('wrapper', [QuantizedInput, DetachedPreprocessing])
def test_checklist_flags_planted_gradient_masking(honest, wrapper):
    model, _, x, y = honest
    masked = wrapper(model).eval()
    with torch.no_grad():
        assert (masked(x).argmax(-1) == y).float().mean() > 0.6  # still a working classifier
    results = {r.name: r for r in run_sanity_checks(
        SanityContext(masked, x, y, eps=24 / 255, steps=10, source_model=model, square_queries=300))}
    assert results['zero_gradients'].passed is False
    assert results['unbounded_eps'].passed is False
    assert results['transfer_weaker'].passed is False  # the honest source model's examples do better
    assert results['black_box_not_better'].passed is False  # Square beats the fooled white-box attack
    assert masking_verdict(list(results.values())).startswith('GRADIENT MASKING SUSPECTED')


def test_checklist_passes_an_honest_model(honest):
    model, _, x, y = honest
    results = run_sanity_checks(SanityContext(model, x, y, eps=16 / 255, steps=10, square_queries=300))
    assert all(r.passed for r in results if r.name != 'transfer_weaker'), [r for r in results if not r.passed]
    assert [r.passed for r in results if r.name == 'transfer_weaker'] == [None]  # no source model: skipped
    assert masking_verdict(results).startswith('no sign of gradient masking')


def test_autoattack_is_never_weaker_than_pgd_and_resumes(honest, tmp_path):
    model, _, x, y = honest
    x, y = x[:24], y[:24]
    eps = 16 / 255
    state = str(tmp_path / 'aa.json')
    aa = run_autoattack(model, x, y, eps=eps, batch_size=24, state_path=state, square_queries=1000)
    pgd = pgd_sweep(model, [(x, y)], PGDSweepConfig(eps=[eps], steps=20), show_progress=False)
    assert aa.robust_accuracy() <= pgd.accuracy()[eps]
    assert aa.clean_accuracy() == pytest.approx(pgd.clean_accuracy())
    assert list(aa.per_attack) == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    assert not (aa.robust & ~aa.clean).any()
    saved = json.load(open(state))
    assert set(saved['done']) == set(aa.per_attack)
    again = run_autoattack(model, x, y, eps=eps, batch_size=24, state_path=state, square_queries=1000)  # no rerun
    assert torch.equal(again.robust, aa.robust)


def test_cli_on_demo_checkpoint_writes_tables_plot_and_report(natural_checkpoint, tmp_path, capsys):
    ckpt, data = natural_checkpoint
    out = tmp_path / 'eval'
    assert eval_main(['--checkpoint', ckpt, ckpt, '--labels', 'a', 'b', '--dataset', 'demo/digits', '--data-dir',
                      data, '--num-samples', '40', '--eps', '0', '8/255', '32/255', '--steps', '5', '--sanity',
                      '--sanity-samples', '20', '--sanity-checks', 'zero_gradients', 'steps_converge',
                      '--sanity-steps', '5', '--output', str(out), '--no-progress', '--device', 'cpu']) == 0
    assert 'a: clean' in capsys.readouterr().out
    results = json.load(open(out / 'results.json'))
    assert [m['label'] for m in results['models']] == ['a', 'b']
    m = results['models'][0]
    assert m['num_samples'] == 40 and m['sweep']['accuracy'][0] == pytest.approx(m['clean_accuracy'])
    assert m['sanity']['verdict'].startswith('no sign')
    rows = open(out / 'sweep.csv').read().splitlines()
    assert rows[0] == 'model,eps,eps_255,accuracy,num_samples' and len(rows) == 1 + 2 * 3
    assert (out / 'robust_curve.png').stat().st_size > 10_000
    assert '| a |' in open(out / 'report.md').read()
    flags = torch.load(out / 'flags_a.pt')
    assert flags['sweep_robust'].shape == (3, 40) and len(flags['indices']) == 40


def test_cli_runs_autoattack_at_each_eps(natural_checkpoint, tmp_path, capsys, caplog):
    ckpt, data = natural_checkpoint
    out = tmp_path / 'eval'
    caplog.set_level('INFO')
    assert eval_main(['--checkpoint', ckpt, '--dataset', 'demo/digits', '--data-dir', data, '--num-samples', '6',
                      '--no-sweep', '--autoattack', '--aa-eps', '32/255', '64/255', '--output', str(out),
                      '--no-progress', '--device', 'cpu']) == 0
    printed = capsys.readouterr()
    assert 'AutoAttack 32/255' in printed.out
    assert 'setting parameters' not in caplog.text  # the backend's own settings line stays quiet
    model = json.load(open(out / 'results.json'))['models'][0]
    runs = model['autoattack_by_eps']
    assert [r['eps'] for r in runs] == [pytest.approx(32 / 255), pytest.approx(64 / 255)]
    assert model['autoattack'] == runs[0]
    assert runs[1]['robust_accuracy'] <= runs[0]['robust_accuracy'] <= model['clean_accuracy']
    assert '(ε=32/255); ' in open(out / 'report.md').read()
    # RobustBench's model-info fields and units, as model_info/imagenet/Linf/RodriguezMunoz2024Characterizing_Swin-B
    # .json writes them: percent strings with two decimals, ε a fraction string
    info = json.load(open(out / f"robustbench_{model['label']}.json"))
    assert {'link', 'name', 'authors', 'additional_data', 'number_forward_passes', 'dataset', 'venue', 'architecture',
            'eps', 'clean_acc', 'reported', 'autoattack_acc', 'unreliable'} <= set(info)
    assert info['eps'] == '32/255' and info['threat_model'] == 'Linf' and info['architecture'] == 'test_resnet'
    assert info['clean_acc'] == f"{model['clean_accuracy']:.2f}" and info['autoattack_acc'] == f"{runs[0]['robust_accuracy']:.2f}"
    assert info['number_forward_passes'] == 1 and info['additional_data'] is False


def test_robustbench_writes_eps_as_its_leaderboard_does():
    from timm_gradreg.evaluate.robustbench import eps_fraction, robustbench_dataset
    assert [eps_fraction(e) for e in (4 / 255, 8 / 255, 8 / 255 / 3, 0.5)] == ['4/255', '8/255', '8/765', '0.5']
    assert robustbench_dataset('torch/cifar10', 'seeded') == 'cifar10' and robustbench_dataset('', 'official') == 'imagenet'


def test_cli_on_random_imagenet_model_and_bad_input(tmp_path, capsys):
    folder = write_image_folder(tmp_path / 'folder', classes=3, train_per_class=1, val_per_class=2, size=40)
    out = tmp_path / 'eval'
    assert eval_main(['--model', 'resnet18', '--data-dir', folder, '--input-size', '3', '64', '64',
                      '--eps', '0', '4/255', '--steps', '2', '--output', str(out), '--no-progress',
                      '--device', 'cpu']) == 0
    assert json.load(open(out / 'results.json'))['models'][0]['num_samples'] == 6
    assert eval_main(['--checkpoint', str(tmp_path / 'nope.pth.tar'), '--data-dir', folder]) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert eval_main(['--model', 'resnet18', '--checkpoint', 'x', 'y', '--labels', 'only-one',
                      '--data-dir', folder]) == 2
    assert '--labels needs one name per model' in capsys.readouterr().err


def test_distributed_eval_matches_single_process(natural_checkpoint, tmp_path):
    ckpt, data = natural_checkpoint
    common = ['--checkpoint', ckpt, '--dataset', 'demo/digits', '--data-dir', data, '--num-samples', '30', '--eps',
              '0', '64/255', '--steps', '10', '--no-progress', '--device', 'cpu', '-b', '8']
    assert eval_main(common + ['--output', str(tmp_path / 'one')]) == 0
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          '-m', 'timm_gradreg.cli.evaluate', *common, '--output', str(tmp_path / 'two')],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert run.returncode == 0, run.stderr[-3000:]
    one = json.load(open(tmp_path / 'one' / 'results.json'))['models'][0]
    two = json.load(open(tmp_path / 'two' / 'results.json'))['models'][0]
    assert two['num_samples'] == 30 and two['clean_accuracy'] == one['clean_accuracy']
    assert two['sweep']['accuracy'][0] == one['sweep']['accuracy'][0]
    flags_two = torch.load(tmp_path / 'two' / 'flags_natural.pt')
    flags_one = torch.load(tmp_path / 'one' / 'flags_natural.pt')
    assert flags_two['indices'] == flags_one['indices'] and torch.equal(flags_two['clean'], flags_one['clean'])


def test_a_rerun_keeps_the_finished_sweep_and_says_so(natural_checkpoint, tmp_path, caplog, monkeypatch):
    ckpt, data = natural_checkpoint
    argv = ['--checkpoint', ckpt, '--dataset', 'demo/digits', '--data-dir', data, '--num-samples', '8', '--eps', '0',
            '8/255', '--steps', '2', '--output', str(tmp_path / 'eval'), '--no-progress', '--device', 'cpu']
    assert eval_main(argv) == 0
    first = json.load(open(tmp_path / 'eval' / 'results.json'))['models'][0]['sweep']
    import timm_gradreg.evaluate.pipeline as cli  # where the sweep runs

    def no_second_sweep(*a, **kw):
        raise AssertionError('the finished sweep ran again')
    monkeypatch.setattr(cli, 'pgd_sweep', no_second_sweep)
    with caplog.at_level('INFO'):
        assert eval_main(argv) == 0
    assert 'resumed the PGD sweep finished in an earlier run' in caplog.text
    split = json.load(open(tmp_path / 'eval' / 'results.json'))['models'][0]['split']
    assert split['num_samples'] == 359 and 0 <= split['clean_accuracy'] <= 100  # the sample beside the split
    assert json.load(open(tmp_path / 'eval' / 'results.json'))['models'][0]['sweep'] == first
    monkeypatch.undo()
    assert eval_main([*argv[:12], '3', *argv[13:]]) == 0  # other settings: swept again, not reused


def test_the_sample_is_set_beside_the_whole_split_unless_asked_not_to(natural_checkpoint, tmp_path):
    ckpt, data = natural_checkpoint
    argv = ['--checkpoint', ckpt, '--dataset', 'demo/digits', '--data-dir', data, '--num-samples', '8', '--eps',
            '8/255', '--steps', '1', '--no-progress', '--device', 'cpu']
    assert eval_main([*argv, '--output', str(tmp_path / 'with')]) == 0
    split = json.load(open(tmp_path / 'with' / 'results.json'))['models'][0]['split']
    model, cfg = load_eval_model(ckpt)  # the count, made here from the model and every image of the split
    pixel_model = normalized_model(model, cfg['mean'], cfg['std']).eval()
    dataset = create_pixel_dataset('demo/digits', data, 'validation', cfg)
    x, y = load_batches(create_pixel_loader(dataset, list(range(len(dataset))), 500)[0], torch.device('cpu'))
    with torch.no_grad():
        expected = 100.0 * (pixel_model(x).argmax(-1) == y).float().mean().item()
    assert split['num_samples'] == len(dataset) == 359 and split['clean_accuracy'] == pytest.approx(expected)
    assert eval_main([*argv, '--no-split-accuracy', '--output', str(tmp_path / 'without')]) == 0
    assert 'split' not in json.load(open(tmp_path / 'without' / 'results.json'))['models'][0]


def test_cli_evaluates_in_an_l2_ball(natural_checkpoint, tmp_path, capsys):
    """--norm L2: the PGD sweep and AutoAttack in L2 balls, radii beyond one pixel's range allowed; the sweep is
    monotone in ε and RobustBench's entry names the threat model."""
    ckpt, data = natural_checkpoint
    out = tmp_path / 'l2'
    assert eval_main(['--checkpoint', ckpt, '--dataset', 'demo/digits', '--data-dir', data, '--num-samples', '6',
                      '--norm', 'L2', '--eps', '0', '0.5', '2', '--steps', '3', '--autoattack', '--aa-eps', '2',
                      '--output', str(out), '--no-progress', '--device', 'cpu', '--no-split-accuracy']) == 0
    model = json.load(open(out / 'results.json'))['models'][0]
    assert model['sweep']['norm'] == 'L2' and model['autoattack']['norm'] == 'L2'
    accuracy = model['sweep']['accuracy']
    assert accuracy[0] >= accuracy[1] >= accuracy[2] and model['autoattack']['robust_accuracy'] <= accuracy[0]
    info = json.load(open(out / f"robustbench_{model['label']}.json"))
    assert info['threat_model'] == 'L2' and info['eps'] == '2'
    assert 'PGD (L2) 0:' in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an L∞ radius beyond the pixel range is still a usage error
        eval_main(['--checkpoint', ckpt, '--dataset', 'demo/digits', '--data-dir', data, '--eps', '0', '2'])
    assert 'outside [0, 1]' in capsys.readouterr().err
