"""Training tasks, one per method, as ``timm.task.ClassificationTask`` subclasses.

Each method is one module that registers its class with its options
(``register_task(name, options=[...])``); every front end reads them from the registry.
A method's parts are small objects of their own modules, chosen by name: GradNorm's inputs
(``penalty_inputs``), its parameter-gradient rule (``penalty_gradients``) and where in a step an
input-gradient penalty is taken (``placement``).
"""
from ._registry import (PrecisionLimit, TaskEntry, all_task_options, create_task, get_task_class, list_tasks,
                        register_task, task_info, task_kwargs, task_options, task_parameters)
from .adversarial import AdversarialTask, FGSMTask, PGDTask
from .base import GradRegTask
from .checks import CompileModeError, TaskSetupError, check_compile_mode, check_task_options, check_task_setup
from .cure import CURETask
from .edge import EdgeTask
from .elle import AdaptiveWeight, ELLETask
from .gradalign import GradAlignTask
from .gradnorm import GradNormTask, gradnorm_fd_agreement
from .igr import InputGradientTask
from .natural import NaturalTask
from .nfgsm import NFGSMTask
from .options import FROM_TASK, Option, attack_count, attack_radius, fraction, number, pixel_amount, sigma_value
from .penalty_gradients import PENALTY_GRADIENTS, DoubleBackprop, FiniteDifference, PenaltyGradientRule, create_penalty_gradient
from .penalty_inputs import PENALTY_INPUTS, CleanInputs, NoisyInputs, PGDInputs, PenaltyInputs, UniformInputs, create_penalty_inputs
from .placement import PLACEMENTS, PenaltyPlacement, create_placement
from .trades import TRADESTask
