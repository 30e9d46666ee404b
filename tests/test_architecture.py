"""The package's layers: a module imports only from its own subpackage and the layers below it, so each layer
can be read and used without those above (the library without the command-line tools)."""
import ast
import os

import timm_gradreg

PACKAGE = os.path.dirname(timm_gradreg.__file__)
#: subpackage -> layer; an import may go to a lower layer or to the same subpackage, never up or sideways
LAYERS = {'utils': 0, 'double_backward': 1, 'models': 1, 'recipes': 1, 'data': 1, 'core': 2, 'tasks': 3,
          'evaluate': 4, 'analyze': 4, 'hub': 5, 'train': 6, 'cli': 7}


def _imports():
    """(importing file, line, its subpackage, the imported subpackage) for every relative import."""
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, PACKAGE).split(os.sep)
            if len(parts) < 2:
                continue
            with open(path, encoding='utf-8') as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level >= 1:
                    base = parts[:-1][:len(parts) - node.level]
                    target = base + (node.module.split('.') if node.module else [])
                    if target and target[0] != parts[0]:
                        yield os.path.relpath(path, PACKAGE), node.lineno, parts[0], target[0]


def test_every_subpackage_has_a_layer():
    subpackages = {d for d in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, d, '__init__.py'))}
    assert subpackages == set(LAYERS)


def test_no_import_runs_upward_or_sideways():
    wrong = [f'{path}:{line} ({source} -> {target})' for path, line, source, target in _imports()
             if LAYERS[target] >= LAYERS[source]]
    assert not wrong, wrong


def test_the_command_line_layer_is_thin():
    """cli/ holds parsers and entry points: no module of it is longer than the largest parser it builds needs."""
    sizes = {name: sum(1 for _ in open(os.path.join(PACKAGE, 'cli', name), encoding='utf-8'))
             for name in os.listdir(os.path.join(PACKAGE, 'cli')) if name.endswith('.py')}
    assert max(sizes.values()) <= 200, sizes
