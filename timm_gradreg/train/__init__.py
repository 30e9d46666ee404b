"""timm-train: timm's training loop with the gradreg tasks."""
from .args import add_gradreg_args, build_parser, check_args, load_config, parse_args, task_kwargs_from_args
from .trainer import Trainer, TrainingError
from .validate import RobustAccuracy, RobustValidationConfig, robust_accuracy, validate
