"""What folding eval BatchNorm into the convolution before it is worth in a double-backprop step.

    python benchmarks/bn_fold.py [--model resnet50] [--img-size 128] [-b 16] [--rounds 8]

Times GradNorm double-backprop training steps (task forward, backward, AdamW step) with the fold
on and off, interleaved round by round in alternating order, and prints the median step times
and the median of the round-by-round ratios on / off.
"""
import argparse
import statistics
import time

import torch

import timm_gradreg
from timm_gradreg import create_task
from timm_gradreg.double_backward import conv as conv_rewrites
from timm_gradreg.models.loading import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='resnet50')
    parser.add_argument('--img-size', type=int, default=128)
    parser.add_argument('-b', '--batch-size', type=int, default=16)
    parser.add_argument('--rounds', type=int, default=8)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=1000)
    timm_gradreg.swap_activations(model, 'gelu', check_functional=False)
    model.eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch_size,))
    task = create_task('gradnorm', model, warmup_epochs=0, verbose=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    fold = conv_rewrites._fold_into_conv

    def step(folded: bool) -> float:
        conv_rewrites._fold_into_conv = fold if folded else (lambda *unused: None)
        start = time.perf_counter()
        task(x, y)['loss'].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for _ in range(3):  # warm-up: compiled kernels, allocator
        step(True)
        step(False)
    times = {True: [], False: []}
    for r in range(args.rounds):
        for folded in ((True, False) if r % 2 == 0 else (False, True)):
            times[folded].append(step(folded))
    conv_rewrites._fold_into_conv = fold
    ratios = sorted(a / b for a, b in zip(times[True], times[False]))
    print(f'{args.model}-GELU {args.img_size}px batch {args.batch_size}, {args.rounds} rounds: fold on '
          f'{statistics.median(times[True]):.3f} s, off {statistics.median(times[False]):.3f} s per step; '
          f'on / off {statistics.median(ratios):.3f} (rounds {ratios[0]:.3f}-{ratios[-1]:.3f})')


if __name__ == '__main__':
    main()
