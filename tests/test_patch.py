"""The stock-train.py patch stays consistent with the library it calls."""
import re

import timm_gradreg
import timm_gradreg.train
from timm_gradreg.recipes import PATCH


def _added_lines():
    with open(PATCH) as f:
        return [line[1:] for line in f if line.startswith('+') and not line.startswith('+++')]


def test_patch_is_a_unified_diff_of_train_py():
    text = open(PATCH).read()
    assert '--- a/train.py\n+++ b/train.py\n' in text
    assert 'main at aa4b5850' in text and 'v1.0.27' in text  # the train.py versions it targets
    hunks = re.findall(r'^@@ -(\d+),(\d+) \+(\d+),(\d+) @@', text, flags=re.M)
    assert len(hunks) >= 8
    body = text.split('+++ b/train.py\n', 1)[1].splitlines()
    # hunk line counts add up (a malformed hunk would not apply)
    i = 0
    while i < len(body):
        m = re.match(r'@@ -\d+,(\d+) \+\d+,(\d+) @@', body[i])
        assert m, body[i]
        old, new = int(m.group(1)), int(m.group(2))
        i += 1
        while old or new:
            tag = body[i][:1]
            old -= tag in (' ', '-')
            new -= tag in (' ', '+')
            i += 1
        assert old == 0 and new == 0


def test_patch_calls_only_what_the_library_exports():
    added = '\n'.join(_added_lines())
    for name in re.findall(r'timm_gradreg\.(\w+)\(', added):
        assert hasattr(timm_gradreg, name), name
    for module, names in re.findall(r'from timm_gradreg\.(\w+) import ([\w, ]+)', added):
        for name in names.split(','):
            assert hasattr(getattr(timm_gradreg, module), name.strip()), name
    parser = timm_gradreg.train.build_parser()
    dests = {a.dest for a in parser._actions}
    for attr in re.findall(r'args\.(\w+)', added):
        assert attr in dests or attr in ('distributed',), attr
