"""Training tasks, one per method, as ``timm.task.ClassificationTask`` subclasses."""
from ._registry import create_task, get_task_class, list_tasks, register_task, task_parameters
from .adversarial import AdversarialTask, FGSMTask, PGDTask
from .base import CompileModeError, GradRegTask, check_compile_mode
from .edge import EdgeTask
from .gradnorm import GRADNORM_INPUTS, GradNormTask
from .natural import NaturalTask
