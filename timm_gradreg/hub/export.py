"""A trained model as a timm Hub folder: what a user publishes and what anyone loads offline.

    >>> export_hub('output/fmnist/gradnorm/last.pth.tar', 'hub/gradnorm', results='output/eval/results.json')
    >>> timm.create_model('local-dir:hub/gradnorm', pretrained=True)   # the same logits as the checkpoint

The folder is timm's own layout, written by ``timm.models.save_for_hf``: ``config.json`` (the architecture, the
``model_args`` that rebuild it, the activation swap included, and a ``pretrained_cfg`` holding the data config the
model was trained with: mean, std, input size, crop), ``model.safetensors``, and a ``README.md`` model card
(the method and its options, and, where gradreg-eval evaluated this checkpoint, the robustness table with ε,
sample size, 95% interval and the command). timm loads ``local-dir:`` folders from 1.0.27 on.
"""
import json
import os
import shlex
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import timm
import torch
import torch.nn as nn

from ..evaluate.interval import wilson_interval
from ..evaluate.report import format_eps
from ..models.layouts import CheckpointLayoutError, read_checkpoint
from ..models.loading import ModelError, load_eval_model

__all__ = ['HubExport', 'export_hub', 'push_to_hub', 'model_card']


@dataclass
class HubExport:
    """What was written: the folder, the timm name to load it by, the model_args, whether a robustness table
    went into the card."""
    folder: str
    name: str
    model_args: Dict[str, Any]
    evaluated: bool


def _checkpoint_args(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    args = checkpoint.get('args')
    return dict(vars(args)) if args is not None and not isinstance(args, dict) else dict(args or {})


def _build_args(loaded: Any) -> Dict[str, Any]:
    """The timm model arguments that rebuild the trained model: its kwargs, one input channel where it had one,
    and the swapped activation (as ``act_layer``)."""
    args = dict(loaded.model_kwargs)
    size = loaded.data.get('input_size')
    if size and 'in_chans' not in args and size[0] != 3:
        args['in_chans'] = size[0]
    if loaded.swap:
        args['act_layer'] = loaded.swap['act']
    return args


def _same_modules(model: nn.Module, rebuilt: nn.Module) -> List[str]:
    """Where the rebuilt model's module types differ from the model's (an activation the args do not give)."""
    types = {name: type(m).__name__ for name, m in rebuilt.named_modules()}
    return [f'{name}: {type(m).__name__} vs {types.get(name)}' for name, m in model.named_modules()
            if types.get(name) != type(m).__name__]


def _evaluation(results: Optional[str], checkpoint: str) -> Optional[Dict[str, Any]]:
    """The gradreg-eval results of ``checkpoint`` in ``results`` (results.json), with its options."""
    if not results:
        return None
    with open(results) as f:
        data = json.load(f)
    target = os.path.realpath(checkpoint)
    for model in data.get('models', []):
        if model.get('checkpoint') and os.path.realpath(model['checkpoint']) == target:
            return {'model': model, 'config': data.get('config', {})}
    raise ModelError(f"'{results}' holds no gradreg-eval result of '{checkpoint}' (its models: "
                     f"{', '.join(m.get('checkpoint') or m.get('label', '?') for m in data.get('models', []))}).")


def _accuracy(value: float, n: int) -> str:
    low, high = wilson_interval(value, n)
    return f'{value:.2f} [{low:.1f}, {high:.1f}]'


def _command(config: Dict[str, Any], checkpoint: str) -> str:
    """The gradreg-eval command that made the results (its main options)."""
    parts = ['gradreg-eval', '--checkpoint', checkpoint]
    for key in ('dataset', 'split', 'num_samples', 'subset', 'subset_seed'):
        if config.get(key) not in (None, '', False):
            parts += [f"--{key.replace('_', '-')}", str(config[key])]
    if config.get('autoattack'):
        parts += ['--autoattack', '--aa-eps', *[f'{e:g}' for e in config.get('aa_eps', [])]]
    if config.get('no_sweep'):
        parts.append('--no-sweep')
    elif config.get('eps'):
        parts += ['--eps', *[f'{e:g}' for e in config['eps']], '--steps', str(config.get('steps'))]
    return ' '.join(shlex.quote(p) for p in parts)


def model_card(name: str, model_args: Dict[str, Any], data_config: Dict[str, Any], train_args: Dict[str, Any],
               evaluation: Optional[Dict[str, Any]], checkpoint: str) -> str:
    """The README.md of the folder: how to load it, how it was trained, how robust it measured."""
    method = train_args.get('gradreg', 'unknown')
    options = {k: v for k, v in sorted(train_args.items()) if k.startswith(('gn_', 'attack_', 'edge_', 'trades_',
                                                                          'igr_', 'gradalign_', 'cure_'))
               and v is not None}
    lines = ['---', 'library_name: timm', 'tags: [image-classification, timm, adversarial-robustness, timm-gradreg]',
             '---', '', f'# {name}: {method}', '',
             f"A timm `{name}` trained by timm-gradreg with `--gradreg {method}`"
             + (f" from the recipe `{train_args['config']}`" if train_args.get('config') else '') + '.', '',
             '```python', 'import timm', "model = timm.create_model('local-dir:PATH', pretrained=True).eval()",
             '# or, on the Hub: timm.create_model(\'hf-hub:USER/REPO\', pretrained=True)', '```', '',
             'Inputs: images normalized with the mean and std of `pretrained_cfg` '
             f"(mean {list(data_config['mean'])}, std {list(data_config['std'])}, input size "
             f"{list(data_config['input_size'])}, crop {data_config.get('crop_pct')}).", '',
             '## Training', '', f'- method: `{method}`' + (f' ({", ".join(f"{k} {v}" for k, v in options.items())})'
                                                         if options else ''),
             f'- model arguments: `{json.dumps(model_args)}`']
    for key in ('epochs', 'batch_size', 'lr', 'opt', 'seed', 'dataset'):
        if train_args.get(key) not in (None, ''):
            lines.append(f'- {key}: {train_args[key]}')
    lines += ['']
    if evaluation is None:
        lines += ['## Robustness', '', 'Not evaluated with this export (`gradreg-export --results results.json` '
                  'adds gradreg-eval\'s table).', '']
        return '\n'.join(lines)
    model, config = evaluation['model'], evaluation['config']
    n = model['num_samples']
    norm = config.get('norm', 'Linf')
    rows = [f'| attack | ε ({norm}, [0, 1] pixels) | images | accuracy % [95% Wilson] |', '|---|---|---|---|',
            f"| clean | 0 | {n} | {_accuracy(model['clean_accuracy'], n)} |"]
    sweep = model.get('sweep')
    if sweep:
        for eps, acc in zip(sweep['eps'], sweep['accuracy']):
            if eps > 0:
                rows.append(f"| PGD-{sweep['steps']} ({'+'.join(sweep['losses'])}, {sweep['restarts']} restart"
                            f"{'s' if sweep['restarts'] > 1 else ''}) | {format_eps(eps, sweep.get('norm', 'Linf'))} | "
                            f"{n} | {_accuracy(acc, n)} |")
    for run in model.get('autoattack_by_eps') or ([model['autoattack']] if model.get('autoattack') else []):
        rows.append(f"| AutoAttack {run['version']} | {format_eps(run['eps'], run.get('norm', 'Linf'))} | {n} | "
                    f"{_accuracy(run['robust_accuracy'], n)} |")
    if model.get('split'):
        rows.append(f"| clean, whole split | 0 | {model['split']['num_samples']} | "
                    f"{_accuracy(model['split']['clean_accuracy'], model['split']['num_samples'])} |")
    lines += ['## Robustness', '', f"gradreg-eval on {config.get('dataset') or 'an image folder'} "
              f"({config.get('split', 'validation')} split), the model in eval mode, float32:", '', *rows, '',
              'Command:', '', '```bash', _command(config, checkpoint), '```', '']
    return '\n'.join(lines)


def export_hub(checkpoint: str, output: str, *, use_ema: bool = False, results: Optional[str] = None) -> HubExport:
    """Write ``checkpoint`` (a timm-train, timm or swap-activations checkpoint) as a timm Hub folder ``output``.

    ``results``: a gradreg-eval results.json that evaluated this checkpoint; its table goes into the card.
    """
    if not os.path.isfile(checkpoint):
        raise ModelError(f"Checkpoint '{checkpoint}' does not exist.")
    raw = torch.load(checkpoint, map_location='cpu', weights_only=False)
    try:
        loaded = read_checkpoint(raw, use_ema=True if use_ema else None)
    except CheckpointLayoutError as e:
        raise ModelError(f"Checkpoint '{checkpoint}': {e}") from e
    model, data_config = load_eval_model(checkpoint, use_ema=use_ema)
    name = loaded.model_name
    model_args = _build_args(loaded)
    rebuilt = timm.create_model(name, **model_args)
    differ = _same_modules(model, rebuilt)
    if differ:
        raise ModelError(f"'{name}' built from its arguments {model_args} does not have the trained model's modules "
                         f"({'; '.join(differ[:3])}): the folder would load another network. Export a model whose "
                         'architecture takes its activation as an argument (act_layer).')
    evaluation = _evaluation(results, checkpoint)
    model.pretrained_cfg = {**model.pretrained_cfg, 'num_classes': model.num_classes,
                            **{k: data_config[k] for k in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation')
                               if k in data_config}}
    timm.models.save_for_hf(model, output, model_args=model_args, safe_serialization=True)
    with open(os.path.join(output, 'README.md'), 'w', encoding='utf-8') as f:
        f.write(model_card(name, model_args, data_config, _checkpoint_args(raw), evaluation, checkpoint))
    return HubExport(output, f'local-dir:{output}', model_args, evaluation is not None)


def push_to_hub(folder: str, repo_id: str, token: Optional[str] = None) -> str:
    """Upload an exported folder to the Hugging Face Hub (``huggingface_hub``, a token from ``token``,
    ``HF_TOKEN`` or the login); the repo's URL. Fails with one line when there is no token or no network."""
    try:
        from huggingface_hub import HfApi
        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=folder))
    except Exception as e:  # no token, no network, no permission: say which, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"could not push '{folder}' to the Hub repo '{repo_id}' ({type(e).__name__}: {first[:200]}); "
                         'the folder is complete: log in (huggingface-cli login or HF_TOKEN) and on a network, '
                         'rerun with --push-to-hub, or upload the folder by hand.') from None
