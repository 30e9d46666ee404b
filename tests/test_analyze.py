"""gradreg-analyze: Hessian power iteration, edge correlation, local linearity, the CLI and its figures."""
import json

import pytest
import torch
import torch.nn.functional as F

from timm_gradreg.analyze import (hessian_spectral_norm, hessian_vector_product, local_linearity_error,
                                  log_correlation, oriented_energy)
from timm_gradreg.cli.analyze import main as analyze_main

from conftest import TinyNet
from helpers import write_image_folder


def test_power_iteration_matches_the_explicit_hessian():
    torch.manual_seed(3)
    model = TinyNet(num_classes=3, width=3).double().eval()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 2])

    def loss_fn(z):
        return F.cross_entropy(model(z), y, reduction='none')

    estimate = hessian_spectral_norm(loss_fn, x, iters=300, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        def single(flat):
            z = x.clone()
            z[i] = flat.view(3, 4, 4)
            return loss_fn(z)[i]
        hessian = torch.autograd.functional.hessian(single, x[i].flatten())
        top = torch.linalg.eigvalsh(hessian).abs().max()
        assert estimate[i].item() == pytest.approx(top.item(), rel=1e-4)
    # the batched HVP is the per-sample HVP
    v = torch.randn_like(x)
    hv = hessian_vector_product(loss_fn, x, v)
    h0 = torch.autograd.functional.hessian(lambda f: loss_fn(torch.cat([f.view(1, 3, 4, 4), x[1:]]))[0],
                                           x[0].flatten())
    torch.testing.assert_close(hv[0].flatten(), h0 @ v[0].flatten())


def test_log_correlation_is_one_for_a_power_law_of_edge_energy():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 24, 24)
    energy = oriented_energy(images)
    saliency = 5.0 * energy.clamp_min(1e-3) ** 2  # a monotone power of the edge energy
    torch.testing.assert_close(log_correlation(saliency, energy), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(log_correlation(1.0 / energy.clamp_min(1e-3), energy),
                               -torch.ones(3, dtype=torch.float64))
    noise = log_correlation(torch.rand(3, 24, 24), energy)
    assert noise.abs().max() < 0.3


def test_log_correlation_by_hand():
    # log maps (0, 1, 2, 3) and log energy (0, 2, 4, 7): Pearson 11.5 / (sqrt(5) · sqrt(26.75))
    maps = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).exp()[None]
    energy = torch.tensor([[0.0, 2.0], [4.0, 7.0]]).exp()[None]
    assert log_correlation(maps, energy).item() == pytest.approx(11.5 / (5 ** 0.5 * 26.75 ** 0.5), rel=1e-6)
    # energy below the clamp counts as the clamp: (0, 1, 2, 3) against (log 1e-3, log 1e-3, 0, 0)
    flat = torch.tensor([[1e-5, 1e-4], [1.0, 1.0]])[None]
    assert log_correlation(maps, flat).item() == pytest.approx(2 / (5 ** 0.5 * 1.0), rel=1e-6)


def test_local_linearity_error_vanishes_for_a_linear_loss():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(3, 8, 8, dtype=torch.float64)
    linear = lambda z: (z * w).flatten(1).sum(1) + 2.0  # noqa: E731
    quadratic = lambda z: (z * w).flatten(1).sum(1) ** 2  # noqa: E731
    assert local_linearity_error(linear, x, eps=0.1).max() < 1e-20
    assert local_linearity_error(quadratic, x, eps=0.1).min() > 1e-6


def test_cli_side_by_side_with_figures(tmp_path, capsys):
    folder = write_image_folder(tmp_path / 'folder', classes=3, train_per_class=1, val_per_class=3, size=32)
    out = tmp_path / 'analysis'
    torch.manual_seed(0)
    code = analyze_main(['--model', 'resnet18', 'test_vit', '--labels', 'resnet', 'vit', '--data-dir', folder,
                         '--input-size', '3', '32', '32', '--num-samples', '6', '--power-iters', '3',
                         '--path-points', '3', '--path-power-iters', '2', '--linearity-draws', '2', '--device', 'cpu',
                         '--output', str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert '## Table 1' in printed and '| vit |' in printed
    data = json.load(open(out / 'analysis.json'))['models']
    for label in ('resnet', 'vit'):
        t = data[label]
        table1 = t['table1_grad_l1']
        assert table1['all']['n'] == 6
        for parts in (('pgd_fails', 'pgd_succeeds'), ('correct', 'incorrect')):  # the split covers every image
            counts = [table1[p]['n'] for p in parts]
            assert sum(counts) == 6
            total = sum(table1[p]['mean'] * n for p, n in zip(parts, counts) if n)
            assert total == pytest.approx(6 * table1['all']['mean'], rel=1e-6)
        path = t['fig11_path']
        assert path['t'] == [0.0, 0.5, 1.0]
        assert path['grad_l1'][0] == pytest.approx(table1['all']['mean'], rel=1e-5)  # the path starts at x
        assert path['loss'][-1] >= path['loss'][0]  # towards the PGD-5 point the loss rises
        curvature = t['table6_curvature']
        assert curvature['normalized_curvature']['n'] == 6 and curvature['hessian_norm']['mean'] > 0
        for kind in ('saliency', 'loss_gradient'):
            assert t['table5_edge_correlation'][kind]['n'] == 6
    assert 'table6_curvature' in open(out / 'tables.csv').read()
    image = pytest.importorskip('matplotlib.image', reason='the figures need matplotlib (the eval extra)')
    imread = image.imread
    for name in ('gradients_grid.png', 'gradnorm_hist.png', 'channel_hist.png', 'path_profile.png'):
        pixels = imread(out / name)[..., :3]
        assert min(pixels.shape[:2]) >= 200 and pixels.std() > 0.05, name  # a drawn figure, not a blank canvas
        assert (pixels.mean(-1) < 0.5).mean() > 0.002, name  # with dark ink: axes, text, curves
