"""A task from outside the package: one module and its registration reach every front end."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from helpers import tiny_train_argv, write_image_folder

PLUGIN = textwrap.dedent('''
    """A user's plugin: cross-entropy plus a penalty on the squared logits."""
    import torch
    from timm_gradreg.tasks import GradRegTask, Option, number, register_task


    @register_task('logit_squeeze', options=[
        Option('--squeeze-weight', 'weight', number(0), help='weight of the mean squared logit')])
    class LogitSqueezeTask(GradRegTask):
        def __init__(self, model, criterion=None, *, weight: float = 0.05, **kwargs):
            super().__init__(model, criterion, **kwargs)
            self.weight = weight

        def compute(self, input, target):
            output = self.trainable_module(input)
            ce = self.criterion(output, target)
            penalty = output.float().square().mean()
            return {'loss': ce + self.weight * penalty, 'output': output, 'ce': ce.detach(),
                    'penalty': penalty.detach()}
''')


@pytest.fixture(scope='module')
def plugin_env(tmp_path_factory):
    """A plugin package installed the way pip leaves one: its module and an entry point in its dist-info."""
    site = tmp_path_factory.mktemp('site')
    (site / 'squeeze_plugin.py').write_text(PLUGIN)
    dist = site / 'squeeze_plugin-0.1.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: squeeze-plugin\nVersion: 0.1\n')
    (dist / 'entry_points.txt').write_text('[timm_gradreg.plugins]\nsqueeze = squeeze_plugin\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get('PYTHONPATH', '')]))
    return env


def _timm_train(env, *argv, cwd=None):
    return subprocess.run([sys.executable, '-m', 'timm_gradreg.cli.train', *argv], env=env, capture_output=True,
                          text=True, cwd=cwd)


def test_third_party_task_flag_is_in_help(plugin_env):
    run = _timm_train(plugin_env, '--help')
    assert run.returncode == 0, run.stderr
    assert '--squeeze-weight' in run.stdout and 'logit_squeeze' in run.stdout
    assert 'weight of the mean squared logit' in run.stdout


def test_third_party_task_yaml_key_accepted_and_bad_value_refused(plugin_env, tmp_path):
    good = tmp_path / 'good.yaml'
    good.write_text(yaml.safe_dump({'gradreg': 'logit_squeeze', 'squeeze_weight': '1/4', 'epochs': 1}))
    run = _timm_train(plugin_env, '-c', str(good), '--dry-run')
    assert run.returncode == 0, run.stderr
    resolved = yaml.safe_load(run.stdout)
    assert resolved['gradreg'] == 'logit_squeeze' and resolved['task_kwargs'] == {'weight': 0.25}

    bad = tmp_path / 'bad.yaml'
    bad.write_text(yaml.safe_dump({'gradreg': 'logit_squeeze', 'squeeze_weight': -1}))
    run = _timm_train(plugin_env, '-c', str(bad))
    assert run.returncode == 2 and "config key 'squeeze_weight'" in run.stderr and 'must be >= 0' in run.stderr
    run = _timm_train(plugin_env, '--gradreg', 'logit_squeeze', '--squeeze-weight', 'lots')
    assert run.returncode == 2 and 'argument --squeeze-weight' in run.stderr and "'lots'" in run.stderr
    assert 'Traceback' not in run.stderr


def test_third_party_task_trains_two_steps(plugin_env, tmp_path):
    data = write_image_folder(tmp_path / 'data')
    argv = tiny_train_argv(data, tmp_path / 'out', 'squeeze', '--gradreg', 'logit_squeeze', '--squeeze-weight', '0.5',
                           '--epochs', '1', '-b', '12', '--adv-val-steps', '0')
    run = _timm_train(plugin_env, *argv)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = torch.load(tmp_path / 'out' / 'squeeze' / 'last.pth.tar', weights_only=False)
    assert ckpt['task_state']['task'] == 'logit_squeeze'
    assert ckpt['args'].task_kwargs == {'weight': 0.5}
    summary = (tmp_path / 'out' / 'squeeze' / 'summary.csv').read_text().splitlines()
    header, row = summary[0].split(','), summary[1].split(',')
    assert float(row[header.index('train_penalty')]) > 0  # the plugin's component reached the summary
    assert "Train: 0 [   1/2 (100%)]" in run.stderr  # two optimizer steps: 24 images, batch 12
