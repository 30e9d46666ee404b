"""Forward passes that can be differentiated twice, cheaply.

Double backprop (GradNorm, edge alignment, Hessian-vector products) differentiates the
backward pass of the network. PyTorch's defaults make that fail or slow:

* fused ``scaled_dot_product_attention`` kernels (flash / memory-efficient, CPU and CUDA)
  have no double backward, and the math kernel's is slow; attention runs as its math
  formulation on a softmax with a compiled input gradient (``attention``, ``softmax``);
* eval-mode BatchNorm's double backward is that of a per-channel affine map, folded into
  the convolution before it; strided convolutions' double backward uses the native
  weight-gradient kernel, and patch embeddings' input gradient is a matrix product (``conv``);
* the double backward of a smooth activation (exact GELU, SiLU), of LayerNorm and of softmax
  is a long chain of elementwise kernels; their input gradients are ``torch.compile``d kernels
  instead, whose derivatives AOTAutograd compiles (``activation``, ``layer_norm``, ``softmax``;
  eager if compiling fails, or with ``TORCHDYNAMO_DISABLE=1``).

``double_backward_safe()`` applies all of them to the forward passes run inside it. The
functions computed, and their first and second derivatives, are unchanged.
"""
from .activation import SMOOTH_ACTIVATIONS
from .conv import affine_batch_norm, batch_norm_scale_shift, conv2d_fast_double_backward
from .kernels import CompiledKernel
from .mode import DOUBLE_BACKWARD_OPS, ReentrantCheckpointError, double_backward_safe

__all__ = ['double_backward_safe', 'DOUBLE_BACKWARD_OPS', 'ReentrantCheckpointError', 'CompiledKernel',
           'SMOOTH_ACTIVATIONS', 'affine_batch_norm', 'batch_norm_scale_shift', 'conv2d_fast_double_backward']
