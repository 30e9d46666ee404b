"""timm-gradreg: adversarially robust timm classifiers from natural input gradients.

Regularizers of "Characterizing Model Robustness via Natural Input Gradients"
(Rodríguez-Muñoz, Wang, Torralba, ECCV 2024) as timm training tasks:

    >>> import timm, timm_gradreg
    >>> model = timm.create_model('resnet50', num_classes=10)
    >>> timm_gradreg.swap_activations(model, 'gelu')          # smooth activations first
    >>> task = timm_gradreg.create_task('gradnorm', model, ce_weight=0.5, gn_weight=0.5)
    >>> task.set_epoch(0.0); out = task(images, targets); out['loss'].backward()
"""
from .utils._private import require_timm

require_timm()

from .core.attacks import fgsm_attack, pgd_attack
from .core.edge_maps import (EdgeEnergy, cosine_alignment_loss, create_gradient_teacher, list_gradient_teachers,
                             register_gradient_teacher)
from .core.input_grad import loss_and_input_gradient, per_sample_loss_sum
from .core.normalization import Normalize, PixelSpace, normalized_model
from .core.penalties import gradnorm_penalty, per_sample_gradnorm
from .core.schedules import LinearGrowth, LinearWarmup
from .double_backward import double_backward_safe
from .models.activations import SwapReport, find_functional_activations, swap_activations
from .models.modes import eval_mode, freeze_batchnorm, frozen_parameters
from .models.preact_resnet import PreActResNet, preact_resnet18_cifar
from .tasks import (AdversarialTask, EdgeTask, FGSMTask, GradNormTask, GradRegTask, NaturalTask, PGDTask, create_task,
                    get_task_class, list_tasks, register_task, task_parameters)
from .utils.version import __version__
