"""Third-party tasks, teachers and attack losses: modules that register themselves when imported.

A plugin is a module whose import calls ``register_task`` (or another ``register_*``). The
command-line tools import, before building their parsers, every module named by

* the ``timm_gradreg.plugins`` entry-point group of installed packages, e.g. in a plugin's
  ``pyproject.toml``: ``[project.entry-points."timm_gradreg.plugins"] mytask = "mypkg.mytask"``;
* the ``TIMM_GRADREG_PLUGINS`` environment variable (comma-separated module names).

Their options then appear in ``timm-train --help``, are accepted as YAML keys and are checked
like the built-in ones.
"""
import importlib
import logging
import os
from importlib.metadata import entry_points
from typing import List

__all__ = ['ENTRY_POINT_GROUP', 'ENV_VAR', 'load_plugins', 'PluginError']

ENTRY_POINT_GROUP = 'timm_gradreg.plugins'
ENV_VAR = 'TIMM_GRADREG_PLUGINS'

_logger = logging.getLogger(__name__)
_loaded: List[str] = []


class PluginError(ImportError):
    """A plugin module named by an entry point or TIMM_GRADREG_PLUGINS could not be imported."""


def load_plugins() -> List[str]:
    """Import every plugin module once; returns the names of the modules imported so far."""
    names = [ep.value.split(':')[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    names += [n.strip() for n in os.environ.get(ENV_VAR, '').split(',') if n.strip()]
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            source = ENV_VAR if name in os.environ.get(ENV_VAR, '') else f"entry point group '{ENTRY_POINT_GROUP}'"
            raise PluginError(f"gradreg plugin '{name}' (from {source}) could not be imported: {e}") from e
        _loaded.append(name)
        _logger.debug(f'Loaded gradreg plugin {name}')
    return list(_loaded)
