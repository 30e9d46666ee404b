"""The paper's characterization of input gradients: norms, edge alignment, curvature, linearity."""
from .analysis import AnalysisConfig, analyze_model
from .edge_correlation import edge_correlation_table, log_correlation, oriented_energy
from .figures import channel_histograms, gradient_grid, gradnorm_histograms, path_figure
from .geometry import (curvature_table, hessian_spectral_norm, hessian_vector_product, local_linearity_error,
                       path_profile)
from .gradients import class_logit_gradient, gradient_norm_table, loss_input_gradient, per_sample_ce, saliency_map
