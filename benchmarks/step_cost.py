"""Table-3 cost benchmark: per-step time and memory of each training method, side by side.

Same as ``python -m timm_gradreg.bench``; see ``--help``. The measurements in the README:
    python benchmarks/step_cost.py --model resnet50 --act gelu --img-size 128 -b 16
    python benchmarks/step_cost.py --model vit_small_patch16_224 -b 8
    python benchmarks/step_cost.py --model swin_tiny_patch4_window7_224 -b 8
"""
import sys

from timm_gradreg.bench import main

if __name__ == '__main__':
    sys.exit(main())
