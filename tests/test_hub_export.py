"""gradreg-export writes timm's Hub layout, which timm loads offline with the checkpoint's logits."""
import json
import os

import pytest
import timm
import torch

from timm_gradreg.cli.evaluate import main as eval_main
from timm_gradreg.cli.export import main as export_main
from timm_gradreg.models.loading import load_eval_model
from timm_gradreg.train import Trainer, parse_args

from helpers import tiny_train_argv, write_image_folder

#: a training and an evaluation behind the exports
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A timm-train checkpoint of test_resnet built with ReLU, swapped to SiLU, BatchNorm frozen."""
    root = tmp_path_factory.mktemp('hub')
    data = write_image_folder(root / 'data')
    argv = tiny_train_argv(data, root / 'out', 'swapped', '--epochs', '1', '--gradreg', 'gradnorm',
                           '--gn-warmup-epochs', '0', '--swap-activations', 'silu', '--export-hub')
    argv[argv.index('--model-kwargs') + 1] = 'act_layer=relu'
    args, text = parse_args(argv)
    Trainer(args, text).fit()
    return root, data, str(root / 'out' / 'swapped' / 'last.pth.tar')


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_the_folder_loads_in_timm_with_the_checkpoints_logits(trained, capsys):
    root, _, checkpoint = trained
    out = root / 'folder'
    assert export_main([checkpoint, str(out)]) == 0
    assert sorted(os.listdir(out)) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['model_args']['act_layer'] == 'silu'
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32] and config['pretrained_cfg']['crop_pct'] == 1.0
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert type(loaded.act1).__name__ == 'SiLU'
    reference, data_config = load_eval_model(checkpoint)
    assert list(config['pretrained_cfg']['mean']) == pytest.approx(list(data_config['mean']))
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(_logits(loaded, x), _logits(reference, x), rtol=0, atol=0)
    assert 'Not evaluated' in (out / 'README.md').read_text()


def test_timm_train_exports_its_best_checkpoint_when_asked(trained):
    """--export-hub: OUTPUT/EXPERIMENT/hub, from model_best.pth.tar, loading with that checkpoint's logits."""
    root, _, checkpoint = trained
    folder = os.path.join(os.path.dirname(checkpoint), 'hub')
    best = os.path.join(os.path.dirname(checkpoint), 'model_best.pth.tar')
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(timm.create_model(f'local-dir:{folder}', pretrained=True), x),
                               _logits(load_eval_model(best)[0], x), rtol=0, atol=0)


def test_the_card_carries_gradreg_evals_table_with_its_intervals(trained):
    root, data, checkpoint = trained
    evaluation = root / 'eval'
    assert eval_main(['--checkpoint', checkpoint, '--data-dir', data, '--eps', '0', '8/255', '--steps', '2',
                      '--num-samples', '8', '--no-split-accuracy', '--workers', '0', '--no-progress',
                      '--output', str(evaluation)]) == 0
    out = root / 'evaluated'
    assert export_main([checkpoint, str(out), '--results', str(evaluation / 'results.json')]) == 0
    card = (out / 'README.md').read_text()
    results = json.loads((evaluation / 'results.json').read_text())['models'][0]
    assert f"| 8/255 | 8 | {results['sweep']['accuracy'][-1]:.2f} [" in card
    assert f"| clean | 0 | 8 | {results['clean_accuracy']:.2f} [" in card
    assert 'gradreg-eval --checkpoint' in card and '--gradreg gradnorm' in card


def test_results_of_another_checkpoint_are_refused(trained, tmp_path, capsys):
    _, _, checkpoint = trained
    other = tmp_path / 'results.json'
    other.write_text(json.dumps({'models': [{'checkpoint': '/elsewhere/last.pth.tar'}], 'config': {}}))
    assert export_main([checkpoint, str(tmp_path / 'x'), '--results', str(other)]) == 2
    assert 'holds no gradreg-eval result' in capsys.readouterr().err


def test_push_without_a_network_or_token_fails_in_one_line_and_keeps_the_folder(trained, tmp_path, capsys,
                                                                                monkeypatch):
    _, _, checkpoint = trained
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_TOKEN', '')
    assert export_main([checkpoint, str(tmp_path / 'pushed'), '--push-to-hub', 'someone/model']) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if 'error' in line]
    assert len(errors) == 1 and "could not push" in errors[0]
    assert (tmp_path / 'pushed' / 'model.safetensors').exists()


def test_an_existing_folder_is_refused(trained, tmp_path, capsys):
    _, _, checkpoint = trained
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'keep.txt').write_text('x')
    assert export_main([checkpoint, str(tmp_path / 'full')]) == 2
    assert 'exists and is not empty' in capsys.readouterr().err
