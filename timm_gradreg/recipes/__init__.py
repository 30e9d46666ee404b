"""The recipes that ship with the package: the paper's experiments as timm-train YAML configs.

A recipe is named by its path under the recipe folder without ``.yaml`` (``imagenet/swin_base_gradnorm``);
``timm-train -c NAME`` and ``gradreg-eval -c NAME`` read it from here when no file NAME exists, so a
local file always wins. Each recipe's header comment opens with its title (the first sentence) and
states the result it reproduces (``Paper: ...`` or, for the demo, ``Measured: ...``).

``PATCH`` is the patch that adds the same options to timm's own train.py.

The files live in the repository's top-level ``recipes/`` and ``patches/`` folders; the wheel ships
them inside this package (``files/`` and ``patches/``). Both layouts are found.
"""
import glob
import os
import re
from dataclasses import dataclass
from typing import List

from ..utils.registry import close_matches

__all__ = ['RECIPE_DIR', 'PATCH', 'Recipe', 'list_recipes', 'find_recipe', 'recipe_table', 'RecipeNotFound',
           'config_path']

_HERE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(os.path.dirname(_HERE))


def _folder(packaged: str, checkout: str) -> str:
    """The wheel's copy inside the package, else the source checkout's top-level folder."""
    inside = os.path.join(_HERE, packaged)
    return inside if os.path.isdir(inside) else os.path.join(_CHECKOUT, checkout)


RECIPE_DIR = _folder('files', 'recipes')
PATCH = os.path.join(_folder('patches', 'patches'), 'timm-train-gradreg.patch')


class RecipeNotFound(ValueError):
    """Neither a file nor a packaged recipe of that name exists."""


@dataclass(frozen=True)
class Recipe:
    name: str
    path: str
    title: str
    result: str
    command: str  # the console script that reads it: timm-train or gradreg-eval


def _header(path: str) -> str:
    lines = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            if not line.startswith('#'):
                break
            lines.append(line[1:].strip())
    return ' '.join(lines)


def _first_sentence(text: str) -> str:
    match = re.match(r'(.+?)(?:\.\s(?=[A-Z])|:\s|$)', text)  # 'et al. 2023', 'Eq. 3' do not end it
    return match.group(1).strip() if match else text


def _result(text: str) -> str:
    match = re.search(r'\b(Paper|Measured): (.+?)\.(?:\s(?=[A-Z0-9])|$)', text)
    return f'{match.group(1).lower()}: {match.group(2)}' if match else ''


def _load(path: str) -> Recipe:
    header = _header(path)
    name = os.path.relpath(path, RECIPE_DIR)[:-len('.yaml')].replace(os.sep, '/')
    command = 'gradreg-eval' if 'gradreg-eval -c' in header else 'timm-train'
    return Recipe(name, path, _first_sentence(header), _result(header), command)


def list_recipes() -> List[Recipe]:
    """Every packaged recipe, sorted by name."""
    return [_load(p) for p in sorted(glob.glob(os.path.join(RECIPE_DIR, '*', '*.yaml')))]


def find_recipe(name: str) -> str:
    """Path of the packaged recipe ``name`` (``.yaml`` optional); RecipeNotFound naming the closest ones."""
    key = name[:-len('.yaml')] if name.endswith('.yaml') else name
    names = [r.name for r in list_recipes()]
    if key in names:
        return os.path.join(RECIPE_DIR, *key.split('/')) + '.yaml'
    close = close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ''
    raise RecipeNotFound(f"'{name}' does not exist as a file or a packaged recipe{hint} "
                         f"(timm-train --list-recipes lists the recipes)")


def recipe_table() -> str:
    """The recipes as a plain-text table: name, what it is, the result it reproduces, how to run it."""
    lines = []
    for recipe in list_recipes():
        result = recipe.result or 'no result in its header (a step of a longer experiment, or not measured yet)'
        lines += [recipe.name, f'    {recipe.title}', f'    {result}', f'    {recipe.command} -c {recipe.name}']
    lines += ['', f'A local file of the same name wins. Folder: {RECIPE_DIR}']
    return '\n'.join(lines) + '\n'


def config_path(path: str) -> str:
    """The file a ``-c`` value names: ``path`` if it exists, else the packaged recipe of that name
    (``demo/digits_gradnorm``)."""
    from ..utils.yaml_config import ConfigError
    if os.path.exists(path):
        return path
    try:
        return find_recipe(path)
    except RecipeNotFound as e:
        raise ConfigError(f'config {e}') from None
