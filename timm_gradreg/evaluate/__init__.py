"""Robustness evaluation the way the field does it: PGD sweeps, AutoAttack, gradient-masking checks."""
from .autoattack import STANDARD_ATTACKS, AutoAttackResult, autoattack_backend, run_autoattack
from .pipeline import Evaluator, ModelSpec, evaluate_model, resolve_models
from .data import (SUBSETS, create_pixel_dataset, create_pixel_loader, load_batches, official_imagenet_indices,
                   select_indices, subset_indices)
from .report import markdown_report, plot_robust_curves, write_json, write_sweep_csv
from .robustness import DEFAULT_SWEEP_EPS, PGDSweepConfig, SweepResult, pgd_sweep, worst_case_correct
from .sanity import CheckResult, SanityContext, list_checks, masking_verdict, register_check, run_sanity_checks
