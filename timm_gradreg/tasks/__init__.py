"""Training tasks, one per method, as ``timm.task.ClassificationTask`` subclasses.

Each method is one module that registers its class with its options
(``register_task(name, options=[...])``); every front end reads them from the registry.
``placement`` holds the strategies of where an input-gradient penalty is taken in a step.
"""
from ._registry import (PrecisionLimit, TaskEntry, all_task_options, create_task, get_task_class, list_tasks,
                        register_task, task_info, task_kwargs, task_options, task_parameters)
from .adversarial import AdversarialTask, FGSMTask, PGDTask
from .base import GradRegTask
from .checks import CompileModeError, TaskSetupError, check_compile_mode, check_task_setup
from .cure import CURETask
from .edge import EdgeTask
from .gradalign import GradAlignTask
from .gradnorm import GRADNORM_IMPLS, GRADNORM_INPUTS, GradNormTask, PenaltyGradient, gradnorm_fd_agreement
from .igr import InputGradientTask
from .natural import NaturalTask
from .options import FROM_TASK, Option, attack_count, attack_radius, fraction, number, pixel_amount, sigma_value
from .placement import PLACEMENTS, PenaltyPlacement, create_placement
from .trades import TRADESTask
