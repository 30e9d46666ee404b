"""Edge regularization (paper Eq. 3-4): align class gradients with image edges.

A *gradient teacher* maps a [0, 1] image batch [B, C, H, W] to a target map
[B, 1 or C, H, W]; the class gradient ∇ₓ f(x)_t is pulled towards it by a cosine
loss. The default teacher is the oriented edge energy |g_u*x|² + |g_v*x|²; any
callable works (e.g. a perceptually aligned gradient from a robust model), and
named teachers can be registered with ``register_gradient_teacher``.
"""
import math
from typing import Callable, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.registry import Registry
from .input_grad import at_least_fp32

__all__ = [
    'EdgeEnergy', 'gaussian_blur', 'cosine_alignment_loss', 'COSINE_MODES',
    'register_gradient_teacher', 'create_gradient_teacher', 'list_gradient_teachers',
]

GradientTeacher = Callable[[torch.Tensor], torch.Tensor]


def _gaussian_1d(sigma: float, derivative: bool = False, truncate: float = 3.0) -> torch.Tensor:
    radius = max(1, int(math.ceil(truncate * sigma)))
    u = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (u / sigma) ** 2)
    g = g / g.sum()
    if derivative:
        g = -u / sigma ** 2 * g  # d/du of the normalized Gaussian
    return g


def _bessel_gaussian_1d(t: float, terms: int = 40) -> torch.Tensor:
    """The discrete Gaussian kernel e^(−t)·I_n(t), n = −⌈3t⌉..⌈3t⌉, normalized (variance t; the
    official edge code's filter, with t its σ). I_n by its power series Σ_k (t/2)^(2k+n) / (k!(k+n)!)."""
    radius = int(math.ceil(3 * t))
    values = [math.exp(-t) * sum((t / 2) ** (2 * k + abs(n)) / (math.factorial(k) * math.factorial(k + abs(n)))
                                 for k in range(terms)) for n in range(-radius, radius + 1)]
    kernel = torch.tensor(values, dtype=torch.float64)
    return kernel / kernel.sum()


def _separable(x: torch.Tensor, kernel_u: torch.Tensor, kernel_v: torch.Tensor, padding: str = 'replicate'
               ) -> torch.Tensor:
    """Depthwise 2-D filtering (cross-correlation) with kernel_v (rows, H axis) ⊗ kernel_u (columns, W axis)."""
    c = x.shape[1]
    ku = kernel_u.to(x).view(1, 1, 1, -1).expand(c, 1, 1, -1)
    kv = kernel_v.to(x).view(1, 1, -1, 1).expand(c, 1, -1, 1)
    pu, pv = kernel_u.numel() // 2, kernel_v.numel() // 2
    x = F.conv2d(F.pad(x, (pu, pu, 0, 0), mode=padding), ku, groups=c)
    return F.conv2d(F.pad(x, (0, 0, pv, pv), mode=padding), kv, groups=c)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with replicate borders (no false edges at the image boundary)."""
    if sigma <= 0:
        return x
    g = _gaussian_1d(sigma)
    return _separable(x, g, g)


_CENTRAL_DIFF = torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64)
_SOBEL_SMOOTH = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
#: The official 3×3 Sobel kernel, x / (x² + y²) on the grid {−1, 0, 1}²: [−1, 0, 1] ⊗ [½, 1, ½].
_OFFICIAL_DIFF = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
_OFFICIAL_SMOOTH = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)


class EdgeEnergy(nn.Module):
    """Oriented edge energy of an image batch: one non-negative map per image, [B, 1, H, W].

    Filters:
        'sobel': the official recipe: Gaussian blur (σ) -> 3×3 Sobel derivatives
            (central difference ⊗ [1, 2, 1] smoothing, normalized to per-pixel slope)
            -> sqrt of the squared responses summed over channels -> blur again.
        'gaussian': the literal Eq. 4: Σ_c |∂G_σ/∂u * x_c|² + |∂G_σ/∂v * x_c|² with
            Gaussian-derivative filters.
        'official': the official code's ContourEnergy, term for term: the discrete (Bessel)
            Gaussian kernel, reflected borders, the unnormalized Sobel kernel. It is given the
            *normalized* images, as the official training does (``input_space='normalized'``).
    'sobel' and 'gaussian' replicate borders, so flat regions, image borders included, map to zero.

    ``input_space`` says which images a task passes: [0, 1] 'pixel' images, or the loader's
    'normalized' ones.
    """

    filter_types = ('sobel', 'gaussian', 'official')

    def __init__(self, filters: str = 'sobel', sigma: float = 1.0, input_space: Optional[str] = None):
        super().__init__()
        if filters not in self.filter_types:
            raise ValueError(f'Unknown edge filters {filters!r}; valid: {", ".join(self.filter_types)}')
        if sigma <= 0:
            raise ValueError(f'edge sigma must be > 0, got {sigma}')
        self.filters = filters
        self.sigma = sigma
        self.input_space = input_space or ('normalized' if filters == 'official' else 'pixel')
        if self.input_space not in ('pixel', 'normalized'):
            raise ValueError(f"input_space must be 'pixel' or 'normalized', got {self.input_space!r}")

    def extra_repr(self) -> str:
        return f'filters={self.filters!r}, sigma={self.sigma}, input_space={self.input_space!r}'

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = at_least_fp32(images)
        if self.filters == 'official':
            g = _bessel_gaussian_1d(self.sigma)
            x = _separable(x, g, g, 'reflect')
            du = _separable(x, _OFFICIAL_DIFF, _OFFICIAL_SMOOTH, 'reflect')
            dv = _separable(x, _OFFICIAL_SMOOTH, _OFFICIAL_DIFF, 'reflect')
            energy = (du.square() + dv.square()).sum(1, keepdim=True).sqrt()
            return _separable(energy, g, g, 'reflect')
        if self.filters == 'sobel':
            x = gaussian_blur(x, self.sigma)
            du = _separable(x, _CENTRAL_DIFF, _SOBEL_SMOOTH)
            dv = _separable(x, _SOBEL_SMOOTH, _CENTRAL_DIFF)
            energy = (du.square() + dv.square()).sum(1, keepdim=True).sqrt()
            return gaussian_blur(energy, self.sigma)
        g, dg = _gaussian_1d(self.sigma), _gaussian_1d(self.sigma, derivative=True)
        du = _separable(x, dg, g)
        dv = _separable(x, g, dg)
        return (du.square() + dv.square()).sum(1, keepdim=True)


_TEACHERS: Registry[Callable[..., GradientTeacher]] = Registry('gradient teacher')


def register_gradient_teacher(name: str, factory: Callable[..., GradientTeacher]) -> None:
    """Make ``create_gradient_teacher(name, **kwargs)`` call ``factory(**kwargs)``."""
    _TEACHERS.register(name, factory)


def list_gradient_teachers() -> List[str]:
    return _TEACHERS.names()


def create_gradient_teacher(teacher: Union[str, GradientTeacher] = 'sobel', **kwargs) -> GradientTeacher:
    """A registered teacher by name (kwargs go to its factory) or any callable, returned as is."""
    if callable(teacher):
        return teacher
    return _TEACHERS.get(teacher)(**kwargs)


register_gradient_teacher('sobel', lambda sigma=1.0: EdgeEnergy('sobel', sigma))
register_gradient_teacher('gaussian', lambda sigma=1.0: EdgeEnergy('gaussian', sigma))
register_gradient_teacher('official', lambda sigma=1.0: EdgeEnergy('official', sigma))


COSINE_MODES = ('batch_rms', 'per_image')


def cosine_alignment_loss(grad: torch.Tensor, target: torch.Tensor, mode: str = 'batch_rms') -> torch.Tensor:
    """2 − 2·cos(grad, target): 0 when aligned, scale-invariant in both arguments.

    Modes:
        'batch_rms': the official form: each tensor divided by its RMS over the whole
            batch, then the MSE, which equals 2 − 2·cos over the flattened batch.
        'per_image': the literal Eq. 3: 2 − 2·cos per image, averaged over the batch
            (same scale as 'batch_rms', so weight schedules carry over).
    ``target`` may have one channel; it is broadcast to the gradient's channels.
    """
    if mode not in COSINE_MODES:
        raise ValueError(f'Unknown cosine mode {mode!r}; valid: {", ".join(COSINE_MODES)}')
    target = target.to(grad.dtype)
    if target.shape != grad.shape:
        if target.ndim != grad.ndim or target.shape[0] != grad.shape[0] or target.shape[2:] != grad.shape[2:] \
                or target.shape[1] not in (1, grad.shape[1]):
            raise ValueError(f'teacher map of shape {tuple(target.shape)} does not broadcast to the gradient '
                             f'shape {tuple(grad.shape)}; expected [B, 1 or C, H, W]')
        target = target.expand_as(grad)
    tiny = torch.finfo(grad.dtype).tiny
    if mode == 'batch_rms':
        g = grad / grad.square().mean().sqrt().clamp_min(tiny)
        t = target / target.square().mean().sqrt().clamp_min(tiny)
        return (g - t).square().mean()
    g, t = grad.flatten(1), target.flatten(1)
    cos = (g * t).sum(1) / (g.norm(dim=1) * t.norm(dim=1)).clamp_min(tiny)
    return (2.0 - 2.0 * cos).mean()
