"""The official code's PGD iterate selection with and without its scoring bug, side by side.

The official ``adv_generator`` (adv/adv_utils.py) keeps the iterate of highest loss (``replace_best``) over
the start point and each step; the final iterate alone is scored as ``model(images)`` on [0, 1] pixels,
without the normalization every other forward applies. timm-gradreg's ``pgd_attack(select=...)`` scores
every candidate on normalized input. This script runs both on the same starts and reports how often the
chosen iterate differs and the training loss of what is chosen (scored correctly), per batch rule and
per sample rule. Example, on the digits demo's AT checkpoint:

    timm-train -c demo/digits_advtrain
    python benchmarks/official_scoring.py --checkpoint output/demo/digits_advtrain/last.pth.tar \
        --eps 24/255 --step-size 16/255
"""
import argparse
import math

import torch
import torch.nn.functional as F

from timm_gradreg.evaluate import create_pixel_dataset, create_pixel_loader
from timm_gradreg.models.loading import load_eval_model
from timm_gradreg.tasks import fraction


def candidates(model, pixels, labels, mean, std, eps, step, steps, generator):
    """The official iterates: the uniform start, then each step; their per-sample CE on normalized input, and
    the final iterate's CE on raw pixels (the official scoring)."""
    x0 = pixels
    images = (x0 + torch.empty_like(x0).uniform_(-eps, eps, generator=generator)).clamp(0, 1)
    iterates, losses = [], []
    for _ in range(steps):
        images = images.detach().requires_grad_(True)
        loss = F.cross_entropy(model((images - mean) / std), labels, reduction='none')
        (grad,) = torch.autograd.grad(loss.sum(), images)
        iterates.append(images.detach())
        losses.append(loss.detach())
        images = ((images.detach() + step * grad.sign() - x0).clamp(-eps, eps) + x0).clamp(0, 1)
    with torch.no_grad():
        final_correct = F.cross_entropy(model((images - mean) / std), labels, reduction='none')
        final_buggy = F.cross_entropy(model(images), labels, reduction='none')
    return iterates + [images], losses, final_correct, final_buggy


def select(losses, final, per_batch):
    """Index of the kept iterate per sample, as replace_best (strictly higher loss replaces)."""
    scores = torch.stack(losses + [final])  # [iterates, B]
    if per_batch:
        means = scores.mean(1)
        best = 0
        for i in range(1, len(means)):
            best = i if means[i] > means[best] else best
        return torch.full((scores.shape[1],), best, dtype=torch.long)
    best = torch.zeros(scores.shape[1], dtype=torch.long)
    for i in range(1, scores.shape[0]):
        best = torch.where(scores[i] > scores[best, torch.arange(scores.shape[1])], torch.full_like(best, i), best)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True)
    parser.add_argument('--dataset', default='demo/digits')
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--split', default='train')
    parser.add_argument('--eps', type=fraction, default=4 / 255)
    parser.add_argument('--step-size', type=fraction, default=8 / 255 / 3)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, cfg = load_eval_model(args.checkpoint)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    mean = torch.tensor(cfg['mean']).view(1, -1, 1, 1)
    std = torch.tensor(cfg['std']).view(1, -1, 1, 1)
    dataset = create_pixel_dataset(args.dataset, args.data_dir, args.split, cfg)
    loader, _ = create_pixel_loader(dataset, range(min(len(dataset), args.batch_size * args.batches)),
                                    args.batch_size)
    generator = torch.Generator().manual_seed(args.seed)
    stats = {rule: {'differ': 0, 'final_correct': 0, 'final_buggy': 0, 'loss_correct': 0.0, 'loss_buggy': 0.0}
             for rule in ('batch', 'sample')}
    batches = samples = 0
    for pixels, labels in loader:
        iterates, losses, final_correct, final_buggy = candidates(
            model, pixels, labels, mean, std, args.eps, args.step_size, args.steps, generator)
        true_scores = torch.stack(losses + [final_correct])
        rows = torch.arange(labels.shape[0])
        for rule in stats:
            right = select(losses, final_correct, rule == 'batch')
            wrong = select(losses, final_buggy, rule == 'batch')
            s = stats[rule]
            s['differ'] += int((right != wrong).any()) if rule == 'batch' else int((right != wrong).sum())
            s['final_correct'] += int((right == len(iterates) - 1).sum())
            s['final_buggy'] += int((wrong == len(iterates) - 1).sum())
            s['loss_correct'] += true_scores[right, rows].sum().item()
            s['loss_buggy'] += true_scores[wrong, rows].sum().item()
        batches += 1
        samples += labels.shape[0]
    print(f'{args.checkpoint}: {samples} training images in {batches} batches, PGD-{args.steps} '
          f'ε {args.eps * 255:g}/255 step {args.step_size * 255:g}/255, mean/std {cfg["mean"]}/{cfg["std"]}')
    for rule, s in stats.items():
        unit, n = ('batches', batches) if rule == 'batch' else ('samples', samples)
        p = s['differ'] / n
        half = 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / n)
        print(f'  per {rule}: chosen iterate differs in {s["differ"]}/{n} {unit} ({100 * p:.1f}% ± {100 * half:.1f}); '
              f'final iterate kept {100 * s["final_correct"] / samples:.1f}% (correct scoring) vs '
              f'{100 * s["final_buggy"] / samples:.1f}% (official scoring); mean CE of the kept iterate '
              f'{s["loss_correct"] / samples:.4f} vs {s["loss_buggy"] / samples:.4f} '
              f'(ratio {s["loss_buggy"] / s["loss_correct"]:.3f})')


if __name__ == '__main__':
    main()
