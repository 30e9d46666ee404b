"""The paper's gradient figures, one panel or line per model."""
from typing import Dict

import torch

__all__ = ['gradient_grid', 'gradnorm_histograms', 'channel_histograms', 'path_figure']


def _plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str, title: str = '') -> None:
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    _plt().close(fig)


def _label_panel(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _signed_to_unit(t: torch.Tensor) -> torch.Tensor:
    """Signed map -> [0, 1] image, gray = 0, per-image scale by the largest magnitude."""
    scale = t.flatten(1).abs().amax(1).clamp_min(1e-30).view(-1, 1, 1, 1)
    return (t / (2 * scale) + 0.5).clamp(0, 1)


def _show(ax, img: torch.Tensor) -> None:
    img = img.permute(1, 2, 0).numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap='gray' if img.shape[-1] == 1 else None,
              vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def gradient_grid(path: str, images: torch.Tensor, results: Dict[str, Dict], eps: float, n: int = 8) -> None:
    """Fig. 1/3: images, then per model its loss-input gradient and its PGD perturbation, as images."""
    plt = _plt()
    n = min(n, images.shape[0])
    pick = torch.linspace(0, images.shape[0] - 1, n).round().long()  # spread over the (class-sorted) subset
    rows = [('image', images[pick])]
    for label, r in results.items():
        rows.append((f'{label}\n∇ₓ loss', _signed_to_unit(r['arrays']['grad'][pick])))
        rows.append((f'{label}\nPGD δ (ε={eps * 255:g}/255)',
                     (r['arrays']['perturbation'][pick] / (2 * eps) + 0.5).clamp(0, 1)))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.2, 1.35 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(n):
            _show(axes[i][j], imgs[j].cpu())
        axes[i][0].set_ylabel(name, fontsize=7, rotation=0, ha='right', va='center')
    _save(fig, path, 'Input gradients and PGD perturbations (gray = 0)')


def gradnorm_histograms(path: str, results: Dict[str, Dict]) -> None:
    """Fig. 6: distribution of ||g||₁ over images, all / correctly / incorrectly classified."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3), squeeze=False)
    for ax, (label, r) in zip(axes[0], results.items()):
        l1, correct = r['arrays']['grad_l1'], r['arrays']['correct']
        logs = l1.clamp_min(1e-30).log10()
        bins = torch.linspace(logs.min().item(), logs.max().item() + 1e-6, 30).tolist()
        groups = (('all', torch.ones_like(correct), 'black', '-'), ('correct', correct, 'tab:green', '--'),
                  ('incorrect', ~correct, 'tab:red', '-'))
        for name, sel, color, style in groups:
            if sel.any():
                ax.hist(logs[sel].tolist(), bins=bins, histtype='step', color=color, linestyle=style, linewidth=1.5,
                        label=f'{name} ({int(sel.sum())})')
        _label_panel(ax, label, 'log10 ||∇ₓ loss||₁', 'images')
    _save(fig, path, 'Distribution of the L1 norm of loss-input gradients')


def channel_histograms(path: str, results: Dict[str, Dict]) -> None:
    """Fig. 7: distribution of |g| per pixel, per RGB channel, log scale."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3), squeeze=False)
    colors = ('tab:red', 'tab:green', 'tab:blue')
    for ax, (label, r) in zip(axes[0], results.items()):
        g = r['arrays']['grad'].abs().clamp_min(1e-30).log10()
        bins = torch.linspace(g.min().item(), g.max().item() + 1e-6, 40).tolist()
        for c in range(g.shape[1]):
            name = 'RGB'[c] if g.shape[1] == 3 else str(c)
            ax.hist(g[:, c].flatten().tolist(), bins=bins, histtype='step', color=colors[c % 3], label=name)
        ax.set_yscale('log')
        _label_panel(ax, label, 'log10 |∇ₓ loss| per pixel', 'pixels')
    _save(fig, path, 'Per-channel distribution of input-gradient magnitudes')


def path_figure(path: str, results: Dict[str, Dict]) -> None:
    """Fig. 11: loss, ||g||₁ and normalized curvature along x + t·(PGD-5(x) − x)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for label, r in results.items():
        p = r['tables']['fig11_path']
        for ax, key in zip(axes, ('loss', 'grad_l1', 'curvature')):
            ax.plot(p['t'], p[key], marker='o', markersize=3, label=label)
    for ax, title in zip(axes, ('loss', '||∇ₓ loss||₁', '||H||₂ / ||∇ₓ loss||₂')):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel('t in x + t·(PGD-5(x) − x)')
        ax.set_yscale('log')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _save(fig, path)
