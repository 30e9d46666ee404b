"""timm-train: timm's training loop with the gradreg tasks."""
from .args import add_gradreg_args, build_parser, check_args, load_config, parse_args
from .config import config_summary, config_yaml, global_batch_note, resolve_config, resolve_lr
from .trainer import Trainer, TrainingError, TrainingInterrupted, schedule_position
from .validate import RobustAccuracy, RobustValidationConfig, robust_accuracy, validate
