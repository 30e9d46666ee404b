"""The training loop: timm's train.py as a small class whose steps can be overridden.

Everything comes from timm (create_model, resolve_data_config, create_dataset,
create_loader with prefetcher and FastCollateMixup, create_optimizer_v2,
create_scheduler_v2, the task's ModelEmaV3, NativeScaler, init_distributed_device,
distribute_bn, update_summary) and the method from ``create_task(cfg.gradreg)``;
the loop knows no method by name.

    >>> from timm_gradreg.train import Trainer, parse_args
    >>> args, text = parse_args(['-c', 'demo/digits_gradnorm'])
    >>> Trainer(args, text).fit()

The Trainer reads the resolved configuration (``resolve_config(args)``, ``self.cfg``) and never
writes to it. Each ``build_*`` step takes what it needs as arguments and returns what it builds;
``setup()`` calls them in timm's order and keeps the results as attributes (all declared in
``__init__``), so an override sees its inputs in its signature.
"""
import argparse
import importlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from contextlib import suppress
from datetime import datetime
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import yaml
from timm import utils
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader, resolve_data_config
from timm.layers import convert_sync_batchnorm
from timm.models import safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import load_task_ema_checkpoint, resume_task_checkpoint
from timm.utils import NativeScaler
from timm.utils.distributed import init_distributed_device_so
from torchvision.utils import save_image

from ..core.normalization import PixelSpace
from ..data import DATA_SOURCES, dataset_num_classes, is_demo_dataset, name_skipped_files, resolve_dataset
from ..evaluate.interval import format_accuracy
from ..hub import export_hub
from ..models.checkpoint import AtomicCheckpointSaver
from ..models.modes import freeze_batchnorm
from ..tasks import GradRegTask, create_task
from ..utils.files import OutputPathError, check_output_path
from ..utils.progress import format_duration
from .args import check_distributed_options
from .fsdp import check_fsdp, fsdp_units, full_state, load_full_state, shard_model
from .config import criterion_kwargs, global_batch_note, mixup_active, resolve_config
from .model import create_train_model
from .output import RunFolderError, claim_run_folder, release_run_folder
from .recovery import (RESUME_KEY, CheckpointFileError, StopSignals, TrainingInterrupted, check_resume_checkpoint,
                       get_rng_state, set_rng_state)
from .validate import RobustValidationConfig, validate

__all__ = ['Trainer', 'TrainingError', 'TrainingInterrupted', 'schedule_position']

_logger = logging.getLogger('timm_gradreg.train')


class TrainingError(RuntimeError):
    """Setup problem the user can fix (missing data, bad checkpoint...)."""


def _gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter gradient the optimizer would apply is finite (one reduction per tensor)."""
    grads = [p.grad for group in optimizer.param_groups for p in group['params'] if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def schedule_position(epoch: int, batch_idx: int, num_batches: int, accum_steps: int = 1) -> float:
    """The fractional epoch of an optimizer step, as the regularizer schedules see it.

    The official code's ``epoch + (batch_idx // accum) / (num_batches / accum)``: constant within
    a gradient-accumulation group, advancing by one step's share of the epoch per update.
    """
    return epoch + (batch_idx // accum_steps) * accum_steps / num_batches


class Trainer:
    """Builds everything from ``args`` (see ``parse_args``) and trains with ``fit()``.

    Override a ``build_*`` method to change one piece (e.g. ``build_model`` for a
    custom architecture) or ``train_one_epoch`` / ``validate`` for the loop.
    """

    def __init__(self, args: argparse.Namespace, args_text: Optional[str] = None):
        self.args_text = args_text if args_text is not None else yaml.safe_dump(vars(args), default_flow_style=False)
        self.cfg = resolve_config(args)
        self.rank, self.local_rank, self.distributed = 0, 0, False
        self.signals = StopSignals()
        self.consecutive_skips = 0
        self.resume_point = None
        self.resumed_recovery: Optional[str] = None  # the recovery checkpoint resumed from, removed once past it
        self._validation_time = 0.0
        self._first_update_time = 0.0
        self.output_dir: Optional[str] = None
        self.created_output = False
        self.is_setup = False
        # built by setup(), in this order
        self.device: Optional[torch.device] = None
        self.amp_autocast: Any = suppress
        self.loss_scaler: Optional[NativeScaler] = None
        self.data_config: Dict[str, Any] = {}
        self.space: Optional[PixelSpace] = None
        self.loader_train: Any = None
        self.loader_eval: Any = None
        self.mixup_fn: Optional[Mixup] = None
        self.task: Optional[GradRegTask] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.eval_model: Optional[nn.Module] = None
        self.robust: Optional[RobustValidationConfig] = None
        self.eval_metric = 'loss'
        self.saver: Optional[AtomicCheckpointSaver] = None
        self.updates_per_epoch = 0
        self.lr_scheduler: Any = None
        self.num_epochs = self.start_epoch = self.end_epoch = 0
        self._update_ok = True  # whether the last optimizer update was applied (finite gradients)

    # ------------------------------------------------------------------ properties
    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def log(self, msg: str) -> None:
        if self.is_primary:
            _logger.info(msg)

    # ------------------------------------------------------------------ setup steps
    def init_device(self) -> torch.device:
        """The device and, under torchrun, the process group (timm's init_distributed_device)."""
        cfg = self.cfg
        for name in cfg.device_modules or ():
            importlib.import_module(name)  # device backends that register themselves (e.g. torch_npu)
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        info = init_distributed_device_so(device=cfg.device, dist_backend=getattr(cfg, 'dist_backend', None),
                                          dist_url=getattr(cfg, 'dist_url', None))
        if info['world_size'] != cfg.world_size:
            raise TrainingError(f"the process group has {info['world_size']} processes, the configuration was resolved "
                                f'for {cfg.world_size}')
        self.rank, self.local_rank, self.distributed = info['global_rank'], info['local_rank'], info['distributed']
        device = torch.device(info['device'])
        if self.distributed:
            _logger.info(f'Training in distributed mode, process {self.rank} of {cfg.world_size}, device {device}.')
        else:
            _logger.info(f'Training with a single process on 1 device ({device}).')
        return device

    def build_amp(self) -> Tuple[Any, Optional[NativeScaler]]:
        """Autocast context factory and, for float16, timm's NativeScaler (shared with the task)."""
        cfg = self.cfg
        if not cfg.amp:
            self.log('AMP not enabled. Training in float32.')
            return suppress, None
        amp_dtype = torch.bfloat16 if cfg.amp_dtype == 'bfloat16' else torch.float16
        if amp_dtype == torch.float16 and self.device.type == 'cpu' and self.is_primary:
            _logger.warning('--amp on a CPU autocasts to float16, which most CPUs have no arithmetic for and run '
                            'slower than float32: --amp-dtype bfloat16 is the CPU mixed precision.')
        autocast = partial(torch.autocast, device_type=self.device.type, dtype=amp_dtype)
        scaler = NativeScaler(device=self.device.type) if amp_dtype == torch.float16 else None
        self.log(f'Using native torch AMP ({cfg.amp_dtype}).')
        return autocast, scaler

    def build_model(self) -> nn.Module:
        model = create_train_model(self.cfg, log=self.log, check_functional=self.is_primary)
        self.log(f'Model {safe_model_name(self.cfg.model)} created, param count: '
                 f'{sum(p.numel() for p in model.parameters())}')
        return model

    def build_datasets(self, data_config: Dict[str, Any]) -> Tuple[Any, Any]:
        """The training and validation datasets (the demo and standard sets prepared on disk first)."""
        cfg = self.cfg
        if not (is_demo_dataset(cfg.dataset) or cfg.dataset in DATA_SOURCES):  # those find their own files
            if not cfg.data_dir and (not cfg.dataset or cfg.dataset.split('/')[0] in ('folder', 'torch')):
                raise TrainingError('No data: give --data-dir (an image folder with train/validation splits, or where '
                                    'a torch/ dataset is downloaded to) or use the embedded --dataset demo/digits.')
            if cfg.data_dir and not cfg.dataset and not os.path.exists(cfg.data_dir):
                raise TrainingError(f"--data-dir '{cfg.data_dir}' does not exist.")
        if cfg.data_dir and os.path.isfile(cfg.data_dir):
            raise TrainingError(f"--data-dir '{cfg.data_dir}' is a file: give the folder that holds the data "
                                '(train/ and validation/ class folders, or a standard set\'s files).')
        try:
            dataset_name, data_dir = resolve_dataset(cfg.dataset, cfg.data_dir, cfg.dataset_download)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        input_img_mode = cfg.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L')
        common = dict(root=data_dir, class_map=cfg.class_map, download=cfg.dataset_download,
                      batch_size=cfg.batch_size, input_img_mode=input_img_mode, input_key=cfg.input_key,
                      target_key=cfg.target_key)
        if cfg.dataset_trust_remote_code:
            common['trust_remote_code'] = True
        try:
            dataset_train = create_dataset(dataset_name, split=cfg.train_split, is_training=True, seed=cfg.seed,
                                           repeats=cfg.epoch_repeats, num_samples=cfg.train_num_samples, **common)
            dataset_eval = None
            if cfg.val_split:
                dataset_eval = create_dataset(dataset_name, split=cfg.val_split, is_training=False,
                                              num_samples=cfg.val_num_samples, **common)
        except (RuntimeError, FileNotFoundError) as e:  # e.g. timm's "Found 0 images in subfolders of ..."
            raise TrainingError(f"no usable data in --data-dir '{cfg.data_dir}' (dataset "
                                f"'{cfg.dataset or 'image folder'}'): {e}".replace('\n', ' ')) from None
        return name_skipped_files(dataset_train), dataset_eval and name_skipped_files(dataset_eval)

    def check_classes(self, dataset_train, num_classes: int) -> None:
        """Refuse data with fewer than two classes, or a head with fewer outputs than the data has classes."""
        classes = dataset_num_classes(dataset_train)
        if classes is None:
            return
        if classes < 2:
            raise TrainingError(f'the training data has {classes} class(es) (--data-dir {self.cfg.data_dir}): a '
                                'classifier needs at least two, one folder per class.')
        if num_classes < classes:
            raise TrainingError(f'the model has {num_classes} outputs (--num-classes) but the training data has '
                                f'{classes} classes: give --num-classes {classes} or more.')

    def build_loaders(self, dataset_train, dataset_eval, data_config: Dict[str, Any],
                      num_classes: int) -> Tuple[Any, Any, Optional[Mixup]]:
        """timm's loaders (prefetcher, FastCollateMixup) and the Mixup of a run that mixes."""
        cfg = self.cfg
        mixup_fn, collate_fn = None, None
        if mixup_active(cfg):
            mixup_args = dict(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                              prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                              label_smoothing=cfg.smoothing, num_classes=num_classes)
            if cfg.prefetcher:
                collate_fn = FastCollateMixup(**mixup_args)
            else:
                mixup_fn = Mixup(**mixup_args)
        train_interpolation = cfg.train_interpolation
        if cfg.no_aug or not train_interpolation:
            train_interpolation = data_config['interpolation']
        common = dict(mean=data_config['mean'], std=data_config['std'],
                      pin_memory=cfg.pin_mem and self.device.type == 'cuda', device=self.device,
                      distributed=self.distributed, use_prefetcher=cfg.prefetcher,
                      persistent_workers=cfg.persistent_workers and cfg.workers > 0)
        loader_train = create_loader(
            dataset_train, input_size=data_config['input_size'], batch_size=cfg.batch_size, is_training=True,
            no_aug=cfg.no_aug, re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount,
            train_crop_mode=cfg.train_crop_mode, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
            vflip=cfg.vflip, color_jitter=cfg.color_jitter, color_jitter_prob=cfg.color_jitter_prob,
            grayscale_prob=cfg.grayscale_prob, gaussian_blur_prob=cfg.gaussian_blur_prob, auto_augment=cfg.aa,
            num_aug_repeats=cfg.aug_repeats, interpolation=train_interpolation, num_workers=cfg.workers,
            worker_seeding=cfg.worker_seeding, collate_fn=collate_fn, use_multi_epochs_loader=cfg.use_multi_epochs_loader,
            **common)
        loader_eval = None
        if dataset_eval is not None:
            loader_eval = create_loader(
                dataset_eval, input_size=data_config['input_size'],
                batch_size=cfg.validation_batch_size or cfg.batch_size, is_training=False,
                interpolation=data_config['interpolation'], num_workers=cfg.workers, crop_pct=data_config['crop_pct'],
                **common)
        return loader_train, loader_eval, mixup_fn

    def build_task(self, model: nn.Module, data_config: Dict[str, Any],
                   loss_scaler: Optional[NativeScaler]) -> GradRegTask:
        """The method, by name (``create_task(cfg.gradreg)``), on the model and the data's normalization."""
        cfg = self.cfg
        task = create_task(cfg.gradreg, model, criterion_kwargs=criterion_kwargs(cfg), device=self.device,
                           dtype=self.model_dtype, verbose=self.is_primary, mean=data_config['mean'],
                           std=data_config['std'], **cfg.task_kwargs)
        if loss_scaler is not None:
            task.attach_grad_scaler(loss_scaler)
        self.log(f'Task: {task.extra_repr() if hasattr(task, "extra_repr") else type(task).__name__}')
        return task

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        try:
            optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=cfg), **cfg.opt_kwargs)
        except ValueError as e:  # torch's and timm's checks of the optimizer's settings
            raise TrainingError(f'--opt {cfg.opt} with these settings: {e} (timm\'s sgd is Nesterov SGD; '
                                '--opt momentum is plain SGD).' if 'Nesterov' in str(e) else
                                f'--opt {cfg.opt} with these settings: {e}') from None
        self.log(f'Created {type(optimizer).__name__} ({cfg.opt}) optimizer, lr {cfg.lr}, '
                 f'weight decay {cfg.weight_decay}')
        return optimizer

    def build_output(self, task: GradRegTask, optimizer: torch.optim.Optimizer, data_config: Dict[str, Any],
                     eval_metric: str) -> Tuple[Optional[str], Optional[AtomicCheckpointSaver]]:
        """The run's own folder (claimed, args.yaml written) and the checkpoint saver; None, None off rank 0."""
        cfg = self.cfg
        if not self.is_primary:
            return None, None
        exp_name = cfg.experiment or '-'.join([
            datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(cfg.model),
            str(data_config['input_size'][-1])])
        root = cfg.output or './output/train'
        try:
            output_dir, self.created_output = claim_run_folder(root, exp_name, cfg.resume)
        except RunFolderError as e:
            raise TrainingError(str(e)) from None
        if os.path.abspath(output_dir) != os.path.abspath(os.path.join(root, exp_name)):
            self.log(f"{os.path.join(root, exp_name)} holds an earlier run: this run writes to {output_dir} (to "
                     'continue the earlier one, --resume a checkpoint in its folder).')
        saver = AtomicCheckpointSaver(
            model=task.get_trainable_module(), optimizer=optimizer, args=cfg, amp_scaler=task.grad_scaler,
            checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=eval_metric == 'loss',
            max_history=cfg.checkpoint_hist, task=task)
        if cfg.resume and os.path.dirname(os.path.abspath(cfg.resume)) == os.path.abspath(output_dir):
            if hasattr(saver, 'load_state_dict_from_checkpoint'):  # timm >= 1.0.31 keeps the checkpoint ranking
                saver.load_state_dict_from_checkpoint(cfg.resume)
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            f.write(self.args_text)
        if cfg.log_wandb:
            self._init_wandb(exp_name)
        return output_dir, saver

    def setup(self) -> 'Trainer':
        """Build device, model, data, task, optimizer, EMA, DDP, saver and scheduler (timm's order)."""
        cfg = self.cfg
        try:
            check_output_path(cfg.output or './output/train')
        except OutputPathError as e:
            raise TrainingError(str(e)) from None
        self.device = self.init_device()
        try:
            check_distributed_options(cfg.sync_bn, cfg.aug_repeats, cfg.world_size if self.distributed else 1,
                                      self.device.type)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        utils.random_seed(cfg.seed, self.rank)
        self.log(f'Learning rate {cfg.lr:g} for a global batch of {cfg.global_batch_size} ({cfg.world_size} '
                 f'process(es) x {cfg.batch_size} x {cfg.grad_accum_steps} accumulation steps).')
        note = global_batch_note(cfg)
        if note and self.is_primary:
            _logger.warning(note)
        self.amp_autocast, self.loss_scaler = self.build_amp()
        model = self.build_model()
        num_classes = model.num_classes  # before any wrapper (TorchScript, FSDP) hides the attribute
        self.data_config = resolve_data_config(vars(cfg), model=model, verbose=self.is_primary)
        self.space = PixelSpace.from_data_config(self.data_config)
        model.to(device=self.device, dtype=self.model_dtype)
        if cfg.torchscript:
            model = torch.jit.script(model)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.distributed and cfg.sync_bn:
            model = convert_sync_batchnorm(model)
        if cfg.fsdp:
            model = self.shard(model)
        datasets = self.build_datasets(self.data_config)
        self.check_classes(datasets[0], num_classes)
        self.loader_train, self.loader_eval, self.mixup_fn = self.build_loaders(*datasets, self.data_config,
                                                                                num_classes)

        self.task = self.build_task(model, self.data_config, self.loss_scaler)
        self.optimizer = self.build_optimizer(self.task.get_trainable_module())
        resume_epoch, self.resume_point = None, None
        if cfg.resume:
            try:
                checkpoint = check_resume_checkpoint(cfg.resume)
            except CheckpointFileError as e:
                raise TrainingError(str(e)) from None
            self.resume_point = checkpoint.get(RESUME_KEY)
            self.resumed_recovery = cfg.resume if self.resume_point is not None else None
            try:
                resume_epoch = self.resume_sharded(checkpoint) if cfg.fsdp else resume_task_checkpoint(
                    self.task, cfg.resume, optimizer=None if cfg.no_resume_opt else self.optimizer,
                    loss_scaler=None if cfg.no_resume_opt else self.loss_scaler, log_info=self.is_primary,
                    weights_only=False)  # read in full above (timm's allowlist of its args needs torch >= 2.5)
            except RuntimeError as e:  # load_state_dict: missing, unexpected or differently shaped weights
                saved = checkpoint.get('arch', 'another model')
                raise TrainingError(
                    f"--resume '{cfg.resume}' was saved from model '{saved}' and does not fit --model {cfg.model} "
                    f"({str(e).strip().splitlines()[-1].strip()[:200]}): resume with the checkpoint's --model and "
                    '--model-kwargs, or start from its weights with --initial-checkpoint.') from None
        if cfg.model_ema:
            self.task.setup_ema(decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup,
                                device='cpu' if cfg.model_ema_force_cpu else None)
            if cfg.resume:
                load_task_ema_checkpoint(self.task, cfg.resume, weights_only=False)
        if cfg.torchcompile:
            self.task.compile(backend=cfg.torchcompile, mode=cfg.torchcompile_mode)
            if self.task.has_ema():
                self.task.compile_ema(backend=cfg.torchcompile, mode=cfg.torchcompile_mode)
        self.eval_model = self.task.get_eval_model()
        if self.distributed and not cfg.fsdp:  # a sharded model reduces its own gradients
            self.task.prepare_distributed(device_ids=[self.device] if self.device.type == 'cuda' else None,
                                          broadcast_buffers=not cfg.no_ddp_bb)

        self.robust = RobustValidationConfig.from_args(cfg)
        self.eval_metric = cfg.eval_metric if self.loader_eval is not None else 'loss'
        self.output_dir, self.saver = self.build_output(self.task, self.optimizer, self.data_config,
                                                        self.eval_metric)

        self.updates_per_epoch = (len(self.loader_train) + cfg.grad_accum_steps - 1) // cfg.grad_accum_steps
        self.lr_scheduler, self.num_epochs = create_scheduler_v2(
            self.optimizer, **scheduler_kwargs(cfg, decreasing_metric=self.eval_metric == 'loss'),
            updates_per_epoch=self.updates_per_epoch)
        self.start_epoch = cfg.start_epoch if cfg.start_epoch is not None else (resume_epoch or 0)
        if self.resume_point is not None and cfg.start_epoch is None:
            self.start_epoch = self.resume_point['epoch']  # a recovery checkpoint: continue inside its epoch
        done = self.start_epoch * self.updates_per_epoch + (self.resume_point or {}).get('updates', 0)
        if self.lr_scheduler is not None and done > 0:
            self.lr_scheduler.step(self.start_epoch)
            if cfg.sched_on_updates:
                self.lr_scheduler.step_update(done)
        self.end_epoch = min(self.num_epochs, cfg.stop_epoch) if cfg.stop_epoch else self.num_epochs
        self.log(f'Scheduled epochs: {self.num_epochs}, training epochs {self.start_epoch}..{self.end_epoch - 1}.')
        self.is_setup = True
        return self

    def shard(self, model: nn.Module) -> nn.Module:
        """``--fsdp``: the model sharded over the processes (``fsdp.shard_model``), saying how."""
        cfg = self.cfg
        if not self.distributed:
            raise TrainingError('--fsdp shards the model over the torchrun processes, and this run has one: run it '
                                'under torchrun with 2 or more processes, or drop --fsdp.')
        note = check_fsdp(cfg)
        if note:
            self.log(note)
        units = fsdp_units(model)
        model = shard_model(model, self.device)
        self.log(f'FSDP2: {len(units)} blocks and the root module sharded over {cfg.world_size} processes.')
        return model

    def resume_sharded(self, checkpoint: Dict[str, Any]) -> Optional[int]:
        """``--resume`` under ``--fsdp``: the checkpoint's unsharded model and optimizer state scattered into the
        shards (every process), then the task's position and the AMP scaler; the epoch to start from."""
        cfg = self.cfg
        load_full_state(self.task.get_trainable_module(), None if cfg.no_resume_opt else self.optimizer, checkpoint)
        self.task.load_task_state(checkpoint.get('task_state'))
        scaler = None if cfg.no_resume_opt else self.loss_scaler
        if scaler is not None and scaler.state_dict_key in checkpoint:
            scaler.load_state_dict(checkpoint[scaler.state_dict_key])
        epoch = checkpoint.get('epoch')
        return None if epoch is None else epoch + int(checkpoint.get('version', 1) > 1)

    def gathered_state(self) -> Dict[str, Any]:
        """Under ``--fsdp``, the unsharded model and optimizer state a checkpoint stores, gathered by every process
        (call it on all of them); else nothing (the saver reads the model itself)."""
        if not self.cfg.fsdp:
            return {}
        return full_state(self.task.get_trainable_module(), self.optimizer)

    @property
    def stop_signal(self) -> Optional[int]:
        """The stop signal received (SIGTERM, SIGUSR1, SIGINT), if any: the run stops at the next step boundary."""
        return self.signals.signum

    @property
    def model_dtype(self) -> Optional[torch.dtype]:
        """--model-dtype as a torch dtype (None: float32)."""
        return getattr(torch, self.cfg.model_dtype) if self.cfg.model_dtype else None

    def _init_wandb(self, name: str) -> None:
        """Start the wandb run train.py would (metrics go there through timm's update_summary)."""
        try:
            import wandb
        except ImportError:
            raise TrainingError('--log-wandb needs wandb: pip install timm-gradreg[wandb]') from None
        cfg = self.cfg
        if cfg.wandb_resume_id and not cfg.resume:
            raise TrainingError('--wandb-resume-id continues a wandb run: give --resume too')
        wandb.init(project=cfg.wandb_project, name=name, config=vars(cfg), tags=cfg.wandb_tags,
                   resume='must' if cfg.wandb_resume_id else None, id=cfg.wandb_resume_id or None)

    @property
    def bn_frozen(self) -> bool:
        """BatchNorm statistics do not change in training (--bn-eval or --train-in-eval-mode)."""
        return bool(self.cfg.bn_eval or self.cfg.train_in_eval_mode)

    # ------------------------------------------------------------------ loop
    def seed_epoch(self, epoch: int) -> None:
        """Reseed all RNGs from (seed, epoch, rank): a resumed run replays the same data order and noise."""
        utils.random_seed(self.cfg.seed + 65536 * epoch, self.rank)
        sampler = getattr(self.loader_train, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)

    def train_one_epoch(self, epoch: int) -> 'OrderedDict[str, float]':
        cfg, task, optimizer = self.cfg, self.task, self.optimizer
        loader = self.loader_train
        if cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch:
            if cfg.prefetcher and getattr(loader, 'mixup_enabled', False):
                loader.mixup_enabled = False
            elif self.mixup_fn is not None:
                self.mixup_fn.mixup_enabled = False

        module = task.get_trainable_module()
        module.train(not cfg.train_in_eval_mode)
        if cfg.bn_eval:
            freeze_batchnorm(module)
        has_no_sync = self.distributed and hasattr(module, 'no_sync')
        accum_steps = cfg.grad_accum_steps
        last_accum_steps = len(loader) % accum_steps
        last_batch_idx = len(loader) - 1
        last_batch_idx_to_accum = len(loader) - last_accum_steps
        resume = self.resume_point if self.resume_point and self.resume_point['epoch'] == epoch else None
        skip_batches = resume['updates'] * cfg.grad_accum_steps if resume else 0
        num_updates = epoch * self.updates_per_epoch + (resume['updates'] if resume else 0)
        meters: Dict[str, utils.AverageMeter] = OrderedDict(loss=utils.AverageMeter())
        sums: Dict[str, torch.Tensor] = {}  # finite component values x batch size, and their sample counts
        counts: Dict[str, torch.Tensor] = {}
        skipped = 0  # updates not applied: a non-finite loss or gradient
        update_time = utils.AverageMeter()
        start = time.time()
        optimizer.zero_grad()
        self._update_ok = True
        for batch_idx, (input, target) in enumerate(loader):
            if batch_idx < skip_batches:  # a recovery checkpoint's steps: same data order, no work
                if batch_idx + 1 == skip_batches:
                    set_rng_state(resume['rng'])
                    self.resume_point = None
                continue
            last_batch = batch_idx == last_batch_idx
            need_update = last_batch or (batch_idx + 1) % accum_steps == 0
            update_idx = batch_idx // accum_steps
            if batch_idx >= last_batch_idx_to_accum:
                accum_steps = last_accum_steps
            if not cfg.prefetcher:
                input, target = input.to(self.device), target.to(self.device)
                if self.mixup_fn is not None:
                    input, target = self.mixup_fn(input, target)
            if cfg.channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            if self.model_dtype is not None:
                input = input.to(self.model_dtype)
            if cfg.save_images and batch_idx == 0 and self.output_dir is not None:
                save_image(input, os.path.join(self.output_dir, f'train-batch-{epoch}.jpg'), padding=0, normalize=True)
            task.set_epoch(schedule_position(epoch, batch_idx, len(loader), cfg.grad_accum_steps))

            def step():
                with self.amp_autocast():
                    result = task(input, target)
                loss = result['loss'] / accum_steps if accum_steps > 1 else result['loss']
                applied = self.backward(loss, need_update)
                return result, applied

            if has_no_sync and not need_update:
                with task.no_sync():
                    result, applied = step()
            else:
                result, applied = step()
            batch_size = input.shape[0]
            for key, value in result.items():
                if key not in ('loss', 'output') and torch.is_tensor(value) and value.numel() == 1:
                    finite = torch.isfinite(value.detach().float())
                    sums[key] = sums.get(key, 0.0) + torch.where(finite, value.detach().float(), 0.0) * batch_size
                    counts[key] = counts.get(key, 0.0) + finite.float() * batch_size
            loss_value = result['loss'].item()
            if math.isfinite(loss_value):
                meters['loss'].update(loss_value, batch_size)

            if not need_update:
                continue
            num_updates += 1
            optimizer.zero_grad()
            if applied:
                self.consecutive_skips = 0
                task.update_ema(step=num_updates)
            else:
                skipped += 1
                self.consecutive_skips += 1
                self._check_skips(epoch, update_idx, result)
            if cfg.synchronize_step and self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)
            now = time.time()
            if update_time.count == 0:
                self._first_update_time = now - start
            update_time.update(now - start)
            start = now
            if update_idx % cfg.log_interval == 0 or last_batch:
                self._log_train(epoch, update_idx, meters['loss'], sums, counts, update_time)
            if self.lr_scheduler is not None:
                self.lr_scheduler.step_update(num_updates=num_updates, metric=meters['loss'].avg)
            if self._interrupted(epoch, update_idx, last_batch):
                break
            if cfg.recovery_interval and (update_idx + 1) % cfg.recovery_interval == 0:
                self.save_recovery(epoch, update_idx)  # every process: a sharded model gathers its state
        if hasattr(optimizer, 'sync_lookahead'):
            optimizer.sync_lookahead()
        metrics = OrderedDict(loss=meters['loss'].avg)
        metrics.update((k, (v / counts[k].clamp_min(1)).item()) for k, v in sums.items())
        if skipped:
            metrics['skipped_steps'] = float(skipped)
            self.log(f'{skipped} update(s) had a non-finite loss or gradient and were not applied.')
        if self.distributed:
            for key, value in metrics.items():
                metrics[key] = utils.reduce_tensor(torch.tensor([value], device=self.device), cfg.world_size).item()
        return metrics

    def backward(self, loss: torch.Tensor, need_update: bool) -> bool:
        """One ordinary backward (the regularizers' input gradients are already in the graph), clip, step.

        Returns whether the update was applied. Without a GradScaler (fp32, bf16) a non-finite loss
        or gradient in any accumulated micro-batch skips the whole update, so no non-finite value ever
        reaches the weights; with one, the scaler skips it and lowers its scale.
        """
        cfg = self.cfg
        clip_parameters = None
        if cfg.clip_grad is not None:
            clip_parameters = self.task.get_clip_parameters(exclude_head='agc' in cfg.clip_mode)
        if self.loss_scaler is not None:
            self.loss_scaler(loss, self.optimizer, clip_grad=cfg.clip_grad, clip_mode=cfg.clip_mode,
                             parameters=clip_parameters, need_update=need_update)
            return bool(torch.isfinite(loss.detach()))
        if bool(torch.isfinite(loss.detach())):
            loss.backward()
        else:
            self._update_ok = False
        if not need_update:
            return True
        applied = self._update_ok and _gradients_finite(self.optimizer)
        self._update_ok = True
        if applied:
            if cfg.clip_grad is not None:
                utils.dispatch_clip_grad(clip_parameters, value=cfg.clip_grad, mode=cfg.clip_mode)
            self.optimizer.step()
        return applied

    def _check_skips(self, epoch: int, update_idx: int, result: Dict[str, Any]) -> None:
        """Stop after --max-skipped-steps consecutive updates with a non-finite loss or gradient."""
        limit = self.cfg.max_skipped_steps
        if not limit or self.consecutive_skips < limit:
            return
        parts = ', '.join(f'{k} {float(v):.4g}' for k, v in result.items()
                          if k != 'output' and torch.is_tensor(v) and v.numel() == 1)
        last = os.path.join(self.output_dir, 'last.pth.tar') if self.output_dir else None
        raise TrainingError(
            f'training stopped at epoch {epoch}, step {update_idx}: {self.consecutive_skips} consecutive updates had a '
            f'non-finite loss or gradient and were not applied (last: {parts}). The weights never took a '
            f'non-finite value' + (f"; the last checkpoint is '{last}'" if last and os.path.exists(last) else '') +
            '. Lower --lr or the regularizer weight, or raise --max-skipped-steps.')

    def save_recovery(self, epoch: int, update_idx: int) -> Optional[str]:
        """A recovery checkpoint at this step boundary: everything to continue with the next step, the RNG
        states included, so a resumed run replays the uninterrupted one."""
        gathered = self.gathered_state()
        if self.saver is None:
            return None
        self.saver.extra_state = {RESUME_KEY: {'epoch': epoch, 'updates': update_idx + 1, 'rng': get_rng_state()},
                                  **gathered}
        try:
            self.saver.save_recovery(epoch, batch_idx=update_idx)
        finally:
            self.saver.extra_state = {}
        return self.saver.curr_recovery_file

    def remove_resumed_recovery(self) -> None:
        """Once a checkpoint past it is saved, delete the recovery checkpoint this run resumed from (it is in
        the run's folder and nothing would resume from it again)."""
        resumed, self.resumed_recovery = self.resumed_recovery, None
        if not resumed or self.saver is None or not os.path.isfile(resumed):
            return
        folder = os.path.dirname(os.path.abspath(resumed))
        if folder == os.path.abspath(self.output_dir) and \
                os.path.basename(resumed).startswith(self.saver.recovery_prefix):
            os.remove(resumed)
            self.log(f"Removed the recovery checkpoint '{resumed}': the run is past it.")

    def _interrupted(self, epoch: int, update_idx: int, last_batch: bool) -> bool:
        """At a step boundary after SIGTERM / SIGUSR1 / Ctrl-C (on any process): save and stop."""
        signum = self.stop_signal
        if self.distributed:
            flag = torch.tensor([signum or 0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item()) or None
        if not signum:
            return False
        path = self.save_recovery(epoch, update_idx)
        raise TrainingInterrupted(signum, epoch, update_idx, self.updates_per_epoch, path)

    def _log_train(self, epoch, update_idx, loss_meter, sums, counts, update_time) -> None:
        if not self.is_primary:
            return
        lrs = [g['lr'] for g in self.optimizer.param_groups]
        parts = ' '.join(f'{k}: {(v / counts[k].clamp_min(1)).item():#.4g}' for k, v in sums.items())
        if update_time.count < 2:  # the first update warms up (allocations, kernels): no rate yet
            eta = 'ETA after the first updates'
        else:
            per_update = (update_time.sum - self._first_update_time) / (update_time.count - 1)
            epoch_left = per_update * (self.updates_per_epoch - update_idx - 1)
            epochs_after = self.end_epoch - epoch - 1
            run_left = epoch_left + epochs_after * (per_update * self.updates_per_epoch + self._validation_time)
            eta = f'ETA: epoch {format_duration(epoch_left)}, run {format_duration(run_left)}'
        _logger.info(
            f'Train: {epoch} [{update_idx:>4d}/{self.updates_per_epoch} '
            f'({100. * (update_idx + 1) / self.updates_per_epoch:>3.0f}%)]  Loss: {loss_meter.val:#.3g} '
            f'({loss_meter.avg:#.3g})  {parts}  Time: {update_time.val:.3f}s  LR: {sum(lrs) / len(lrs):.3e}  {eta}')

    def validate(self, model: nn.Module, log_suffix: str = '') -> 'OrderedDict[str, float]':
        cfg = self.cfg
        return validate(model, self.loader_eval, space=self.space, robust=self.robust, device=self.device,
                        amp_autocast=self.amp_autocast, distributed=self.distributed,
                        channels_last=cfg.channels_last, log_interval=cfg.log_interval, log_suffix=log_suffix,
                        input_dtype=self.model_dtype, verbose=self.is_primary)

    def fit(self) -> List[Dict[str, Any]]:
        """Train from ``start_epoch`` to ``end_epoch``; returns one record per validated epoch."""
        if not self.is_setup:
            self.setup()
        results, best_metric, best_epoch = [], None, None
        start = time.time()
        try:
            with self.signals.installed():
                best_metric, best_epoch = self._fit_epochs(results)
        finally:
            release_run_folder(self.output_dir)
            if self.distributed and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        if best_metric is not None:
            self.log(f'*** Best metric: {best_metric} (epoch {best_epoch})')
        self.log(self.summary(results, best_metric, best_epoch, time.time() - start))
        if getattr(self.cfg, 'export_hub', False) and self.is_primary and self.output_dir:
            self.export_hub()
        return results

    def export_hub(self) -> str:
        """The best checkpoint (else the last) as a timm Hub folder, OUTPUT/EXPERIMENT/hub."""
        names = [n for n in ('model_best.pth.tar', 'last.pth.tar') if os.path.isfile(os.path.join(self.output_dir, n))]
        if not names:
            raise TrainingError(f'--export-hub: no checkpoint in {self.output_dir} to export')
        folder = os.path.join(self.output_dir, 'hub')
        export = export_hub(os.path.join(self.output_dir, names[0]), folder)
        self.log(f'Exported {names[0]} as a timm Hub folder: timm.create_model({export.name!r}, pretrained=True)')
        return folder

    def discard_unused_output(self) -> None:
        """After a failed run: remove the output folder it created if it holds no checkpoint or summary."""
        folder = self.output_dir
        release_run_folder(folder)
        if not (self.created_output and folder and os.path.isdir(folder)):
            return
        if set(os.listdir(folder)) <= {'args.yaml'}:
            for name in os.listdir(folder):
                os.remove(os.path.join(folder, name))
            os.rmdir(folder)

    def summary(self, results: List[Dict[str, Any]], best_metric: Optional[float], best_epoch: Optional[int],
                seconds: float) -> str:
        """What the run produced: the last epoch's clean and robust accuracy, the checkpoints, the folder."""
        lines = [f'Finished {len(results)} validated epoch(s) in {format_duration(seconds)}.']
        last = results[-1] if results else None
        validation = (last or {}).get('validation') or {}
        if 'top1' in validation:
            n_clean = len(self.loader_eval.dataset)
            line = f"Last epoch ({last['epoch']}): clean top-1 {format_accuracy(validation['top1'], n_clean)}"
            if 'advtop1' in validation:
                n_robust = min(n_clean, self.robust.max_samples or n_clean)
                line += (f", robust top-1 under PGD-{self.robust.steps} at ε {self.robust.eps * 255:.3g}/255 "
                         f"{format_accuracy(validation['advtop1'], n_robust)}")
            lines.append(line)
        if self.output_dir is not None:
            lines.append(f'Outputs in {os.path.abspath(self.output_dir)}: last.pth.tar, summary.csv, args.yaml')
            if best_epoch is not None:
                lines.append(f'model_best.pth.tar is epoch {best_epoch}, chosen by {self.eval_metric} '
                             f'({best_metric:.4g}; --eval-metric sets the criterion)')
        return '\n'.join(lines)

    def _fit_epochs(self, results: List[Dict[str, Any]]) -> Tuple[Optional[float], Optional[int]]:
        """The epoch loop of ``fit``: train, validate, checkpoint; returns the best metric and its epoch."""
        cfg = self.cfg
        best_metric, best_epoch = None, None
        for epoch in range(self.start_epoch, self.end_epoch):
            self.seed_epoch(epoch)
            epoch_start = time.time()
            train_metrics = self.train_one_epoch(epoch)
            train_metrics['time'] = time.time() - epoch_start
            if self.distributed and cfg.dist_bn in ('broadcast', 'reduce') and not self.bn_frozen:
                utils.distribute_bn(self.task.get_trainable_module(), cfg.world_size, cfg.dist_bn == 'reduce')
            last = epoch + 1 == self.end_epoch
            if (epoch + 1) % cfg.val_interval != 0 and not last:
                if self.lr_scheduler is not None:
                    self.lr_scheduler.step(epoch + 1, metric=None)
                continue
            eval_metrics = None
            if self.loader_eval is not None:
                validation_start = time.time()
                eval_metrics = self.validate(self.eval_model)
                ema = self.task.get_trainable_module(ema=True)
                if ema is not None and not cfg.model_ema_force_cpu:
                    if self.distributed and cfg.dist_bn in ('broadcast', 'reduce') and not self.bn_frozen:
                        utils.distribute_bn(ema, cfg.world_size, cfg.dist_bn == 'reduce')
                    eval_metrics = self.validate(self.task.get_eval_model(ema=True), log_suffix=' (EMA)')
                self._validation_time = (time.time() - validation_start) / max(cfg.val_interval, 1)
            if self.output_dir is not None:
                lrs = [g['lr'] for g in self.optimizer.param_groups]
                summary = os.path.join(self.output_dir, 'summary.csv')
                utils.update_summary(epoch, train_metrics, eval_metrics, log_wandb=cfg.log_wandb, filename=summary,
                                     write_header=not os.path.exists(summary) or os.path.getsize(summary) == 0,
                                     lr=sum(lrs) / len(lrs))
            latest = (eval_metrics or train_metrics)[self.eval_metric]
            gathered = self.gathered_state()
            if self.saver is not None:
                self.saver.extra_state = gathered
                try:
                    best_metric, best_epoch = self.saver.save_checkpoint(epoch, metric=latest)
                finally:
                    self.saver.extra_state = {}
                self.remove_resumed_recovery()
            if self.lr_scheduler is not None:
                self.lr_scheduler.step(epoch + 1, latest)
            record = {'epoch': epoch, 'train': dict(train_metrics)}
            if eval_metrics is not None:
                record['validation'] = dict(eval_metrics)
            results.append(record)
            if self.is_primary:
                _logger.info(f'Epoch {epoch}: ' + json.dumps(record))
        return best_metric, best_epoch
