"""The built wheel: the top-level recipes/ and patches/ folders ship inside it, and so does every subpackage."""
import glob
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp('wheel')
    run = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                          '-w', str(out), ROOT], capture_output=True, text=True)
    missing = ('No module named', "invalid command 'bdist_wheel'")  # a build requirement (wheel) not installed
    if run.returncode != 0 and any(m in run.stderr for m in missing):
        pytest.skip(f'cannot build a wheel without isolation here: {run.stderr.strip().splitlines()[-1]}')
    assert run.returncode == 0, run.stderr
    (wheel,) = glob.glob(str(out / 'timm_gradreg-*.whl'))
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_recipes_and_patches_are_top_level_folders_of_the_repository():
    assert os.path.isdir(os.path.join(ROOT, 'recipes', 'imagenet'))
    assert os.path.isfile(os.path.join(ROOT, 'patches', 'timm-train-gradreg.patch'))
    assert not glob.glob(os.path.join(ROOT, 'timm_gradreg', 'recipes', '*', '*.yaml'))


def test_the_wheel_ships_every_recipe_and_the_patch(wheel_names):
    recipes = sorted(os.path.relpath(p, os.path.join(ROOT, 'recipes'))
                     for p in glob.glob(os.path.join(ROOT, 'recipes', '*', '*.yaml')))
    assert recipes and all(f'timm_gradreg/recipes/files/{r}' in wheel_names for r in recipes)
    assert 'timm_gradreg/recipes/patches/timm-train-gradreg.patch' in wheel_names
    assert 'timm_gradreg/evaluate/imagenet_val_official.txt' in wheel_names


def test_the_wheel_ships_every_subpackage(wheel_names):
    packages = [os.path.relpath(os.path.dirname(p), ROOT)
                for p in glob.glob(os.path.join(ROOT, 'timm_gradreg', '**', '__init__.py'), recursive=True)]
    missing = [p for p in packages if f'{p}/__init__.py'.replace(os.sep, '/') not in wheel_names]
    assert not missing, f'subpackages missing from the wheel (add them to pyproject.toml): {missing}'
