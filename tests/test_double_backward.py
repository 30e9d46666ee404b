"""double_backward_safe: same function and derivatives as the native ops, second order included."""
import contextlib

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from timm_gradreg.models.activations import swap_activations
from timm_gradreg.double_backward import (SMOOTH_ACTIVATIONS, CompiledKernel, affine_batch_norm,
                                         conv2d_fast_double_backward, double_backward_safe)


@pytest.mark.parametrize('stride,padding,dilation,groups,kernel,size', [
    (1, 1, 1, 1, 3, 7), (2, 1, 1, 1, 3, 8), (2, 0, 1, 1, 1, 7), (2, 3, 1, 1, 7, 9), (1, 2, 2, 1, 3, 8),
    (2, 1, 1, 2, 3, 8), ((2, 1), (1, 0), 1, 1, 3, 8),
    (4, 0, 1, 1, 4, 8), (4, 0, 1, 1, 4, 9),  # patch embedding (a matrix product), and one that does not tile x
])
def test_conv_first_and_second_derivatives_match_finite_differences(stride, padding, dilation, groups, kernel, size):
    torch.manual_seed(0)
    x = torch.randn(2, 4, size, size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4 // groups, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def conv(x, w, b):
        return conv2d_fast_double_backward(x, w, b, stride, padding, dilation, groups)

    torch.testing.assert_close(conv(x, w, b), F.conv2d(x, w, b, stride, padding, dilation, groups))
    assert gradcheck(conv, (x, w, b))
    assert gradgradcheck(conv, (x, w, b))


def test_patch_embedding_input_gradient_is_a_matrix_product():
    """Kernel = stride convolutions (ViT/Swin patch embeddings) take the matrix-product input gradient,
    equal to the transposed convolution, in NCHW and channels_last; other convolutions do not."""
    from timm_gradreg.double_backward.conv import _differentiable_input_grad, _is_patch_embedding
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    w = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    conv = ((4, 4), (0, 0), (1, 1), 1)
    assert _is_patch_embedding(x, w, conv)
    assert not _is_patch_embedding(x[:, :, :7], w, conv)  # 7 rows: the last patch row is cut
    assert not _is_patch_embedding(x, w, ((2, 2), (0, 0), (1, 1), 1))
    assert not _is_patch_embedding(x, w[:, :, :1, :1], ((1, 1), (0, 0), (1, 1), 1))  # 1×1: the native kernel
    for grad_out in (torch.randn(2, 5, 2, 3, dtype=torch.float64),
                     torch.randn(2, 5, 2, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)):
        grad_x = _differentiable_input_grad(grad_out, x, w, conv)
        assert _graph_has(grad_x, 'MmBackward0') and not _graph_has(grad_x, 'ConvolutionBackward0')
        torch.testing.assert_close(grad_x, F.conv_transpose2d(grad_out, w, stride=4), rtol=1e-12, atol=1e-12)


def test_affine_batch_norm_equals_eval_batch_norm():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    mean, var = torch.randn(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.5
    weight, bias = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    ref = F.batch_norm(x, mean, var, weight, bias, training=False, eps=1e-3)
    torch.testing.assert_close(affine_batch_norm(x, mean, var, weight, bias, eps=1e-3), ref)
    torch.testing.assert_close(affine_batch_norm(x, mean, var, eps=1e-3),
                               F.batch_norm(x, mean, var, training=False, eps=1e-3))


def _penalty_gradients(model, x, y, context):
    model.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    with context:
        out = model(xg)
    loss = F.cross_entropy(out, y, reduction='sum')
    (g,) = torch.autograd.grad(loss, xg, create_graph=True)
    (loss + 10.0 * g.abs().sum()).backward()
    return g.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_resnet_penalty_gradient_equals_native_double_backprop():
    """A timm ResNet (strided convs, eval BatchNorm, GELU): the rewritten ops give the same parameter gradient."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=10)
    swap_activations(model, 'gelu', check_functional=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    model.eval().double()
    x, y = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 2, 3])
    g_ref, p_ref = _penalty_gradients(model, x, y, contextlib.nullcontext())
    g, p = _penalty_gradients(model, x, y, double_backward_safe())
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(p, p_ref, rtol=1e-10, atol=1e-14)


def test_train_mode_batch_norm_is_left_native():
    model = torch.nn.BatchNorm2d(3).train()
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    with double_backward_safe():
        out = model(x)
    assert type(out.grad_fn).__name__ == 'NativeBatchNormBackward0'
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(out, (x - mean) / (var + model.eps).sqrt())  # batch statistics, not running ones
    torch.testing.assert_close(model.running_mean, 0.1 * x.detach().mean((0, 2, 3)))  # running statistics updated


def test_conv_under_bf16_autocast():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with double_backward_safe():
            out = conv(x)
        ref = conv(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out.float().square().sum(), x, create_graph=True)
    g.square().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()


def _conv_bn(x, w, conv_bias, gamma, beta, mean, var, stride):
    with double_backward_safe():
        return F.gelu(F.batch_norm(F.conv2d(x, w, conv_bias, stride, 1), mean, var, gamma, beta, False, 0.1, 1e-3))


@pytest.mark.parametrize('with_conv_bias', [False, True])
def test_batch_norm_after_conv_is_folded_with_exact_derivatives(with_conv_bias):
    """Eval BatchNorm after a convolution becomes conv(x, W·s) + t: same value, gradients and second derivatives."""
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64)
    x = torch.randn(2, 3, 6, 6, **f64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, **f64, requires_grad=True)
    conv_bias = torch.randn(4, **f64, requires_grad=True) if with_conv_bias else None
    gamma, beta = torch.randn(4, **f64, requires_grad=True), torch.randn(4, **f64, requires_grad=True)
    mean, var = torch.randn(4, **f64), torch.rand(4, **f64) + 0.5
    inputs = (x, w, conv_bias, gamma, beta) if with_conv_bias else (x, w, gamma, beta)

    def fn(*args):
        if not with_conv_bias:
            args = args[:2] + (None,) + args[2:]
        return _conv_bn(*args, mean, var, 2)

    out = fn(*inputs)
    assert type(out.grad_fn).__name__ == '_FusedActivationBackward'
    assert type(out.grad_fn.next_functions[0][0]).__name__ == '_ConvBatchNormBackward'  # folded
    ref = F.gelu(F.batch_norm(F.conv2d(x, w, conv_bias, 2, 1), mean, var, gamma, beta, False, 0.1, 1e-3))
    torch.testing.assert_close(out, ref)
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


def test_batch_norm_fold_is_skipped_under_autocast_and_after_other_ops():
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4).eval()
    bn.running_mean.normal_()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with double_backward_safe():
        after_relu = bn(torch.relu(conv(x)))  # not straight after the convolution: the plain affine map
    assert type(after_relu.grad_fn).__name__ == 'AddcmulBackward0'
    torch.testing.assert_close(after_relu, bn(torch.relu(conv(x))))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with double_backward_safe():
            out = bn(conv(x))
        ref = bn(conv(x))
    assert type(out.grad_fn).__name__ != '_ConvBatchNormBackward'
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


def _graph_has(out: torch.Tensor, node_name: str) -> bool:
    """Whether the autograd graph of ``out`` has a node of this type name."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == node_name:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def _assert_rewritten_with_exact_derivatives(call, inputs, node_name, reference=None):
    """``call`` under double_backward_safe() goes through ``node_name``, computes ``reference`` (the call
    itself, natively, by default), and its first and second derivatives pass float64 gradcheck."""
    def rewritten(*args):
        with double_backward_safe():
            return call(*args)

    out = rewritten(*inputs)
    assert _graph_has(out, node_name)
    torch.testing.assert_close(out, (reference or call)(*inputs))
    assert gradcheck(rewritten, inputs)
    assert gradgradcheck(rewritten, inputs)
    return rewritten


@pytest.mark.parametrize('act', [F.gelu, F.silu])
def test_fused_activation_derivatives_match_finite_differences(act):
    """The compiled input-gradient kernel and its AOT-compiled derivative, against float64 finite differences."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    fused = _assert_rewritten_with_exact_derivatives(act, (x,), '_FusedActivationBackward')
    kernel = SMOOTH_ACTIVATIONS[act].input_grad
    assert kernel._compiled is not None and not kernel._failed  # the compiled kernel ran, not the fallback
    gy = torch.randn_like(x)
    (g_native,) = torch.autograd.grad(act(x), x, gy, create_graph=True)
    (g_fused,) = torch.autograd.grad(fused(x), x, gy, create_graph=True)
    torch.testing.assert_close(g_fused, g_native, rtol=1e-12, atol=1e-14)
    (h_native,) = torch.autograd.grad(g_native.square().sum(), x)
    (h_fused,) = torch.autograd.grad(g_fused.square().sum(), x)
    torch.testing.assert_close(h_fused, h_native, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('call', [
    lambda x: F.gelu(x, approximate='tanh'), lambda x: F.silu(x.clone(), inplace=True), lambda x: F.gelu(x.detach()),
])
def test_other_activation_forms_stay_native(call):
    x = torch.randn(2, 3, requires_grad=True)
    with double_backward_safe():
        out = call(x)
    assert out.grad_fn is None or type(out.grad_fn).__name__ != '_FusedActivationBackward'


def test_fused_kernel_falls_back_to_eager_when_compiling_fails(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError('no C++ compiler')
        return run

    monkeypatch.setattr(torch, 'compile', broken_compile)
    kernel = CompiledKernel(torch.mul)
    a, b = torch.randn(3, 2), torch.randn(3, 2)
    with pytest.warns(UserWarning, match='torch.compile failed .*no C\\+\\+ compiler.*eager'):
        torch.testing.assert_close(kernel(a, b), a * b)
    assert kernel._failed
    torch.testing.assert_close(kernel(a, b), a * b)  # no second attempt, no second warning


def test_compiled_kernel_compiles_a_graph_per_shape_past_dynamos_default_limit():
    """Static shapes (faster CPU kernels): each layer size compiles once, more sizes than dynamo's
    default recompile limit (8) included, and every result is the function's."""
    def cube_plus(a, b):
        return a * a * a + b

    kernel = CompiledKernel(cube_plus)
    graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
    shapes = [(n,) for n in range(1, 10)] + [(2, 3, 4, 4)]
    for shape in shapes + shapes:  # the second round reuses the graphs
        a, b = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
        out = kernel(a, b)
        assert out.shape == shape and torch.allclose(out, cube_plus(a, b), rtol=1e-12, atol=1e-12)
    assert not kernel._failed
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] - graphs == len(shapes)


@pytest.mark.parametrize('normalized_shape,affine', [((5,), True), ((4, 5), True), ((5,), False)])
def test_layer_norm_derivatives_match_finite_differences(normalized_shape, affine):
    """The compiled LayerNorm input gradient and its AOT-compiled derivative, against float64 finite differences."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(normalized_shape, dtype=torch.float64, requires_grad=True) if affine else None
    bias = torch.randn(normalized_shape, dtype=torch.float64, requires_grad=True) if affine else None

    def layer_norm(x, weight, bias):
        return F.layer_norm(x, normalized_shape, weight, bias, eps=1e-3)

    _assert_rewritten_with_exact_derivatives(layer_norm, (x, weight, bias), '_LayerNormBackward')


def test_layer_norm_under_autocast_is_left_native():
    """Autocast's dtype policy for LayerNorm differs by device: the native op keeps it."""
    x, weight, bias = torch.randn(2, 3, 8, requires_grad=True), torch.randn(8), torch.randn(8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with double_backward_safe():
            out = F.layer_norm(x.bfloat16(), (8,), weight, bias)
        ref = F.layer_norm(x.bfloat16(), (8,), weight, bias)
    assert type(out.grad_fn).__name__ != '_LayerNormBackward'
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize('call', [
    lambda x: F.softmax(x, dim=-1), lambda x: F.softmax(x, 1), lambda x: torch.softmax(x, 0),
    lambda x: x.softmax(-1), lambda x: x.softmax(dim=1),
])
def test_softmax_derivatives_match_finite_differences(call):
    """F.softmax, torch.softmax and Tensor.softmax (timm's unfused attention) get the compiled input
    gradient; first and second derivatives against float64 finite differences."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    _assert_rewritten_with_exact_derivatives(call, (x,), '_SoftmaxBackward')


def test_softmax_with_a_dtype_is_left_native():
    x = torch.randn(2, 3, requires_grad=True)
    with double_backward_safe():
        out = F.softmax(x, dim=-1, dtype=torch.float64)
    assert type(out.grad_fn).__name__ != '_SoftmaxBackward' and out.dtype == torch.float64


@pytest.mark.parametrize('mask_shape', [None, (1, 3, 5, 5), (2, 3, 5, 5)])
def test_attention_derivatives_match_finite_differences(mask_shape):
    """Attention with the compiled softmax double backward: first and second derivatives, the additive
    (learnable, broadcast) mask included, against float64 finite differences."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = None if mask_shape is None else torch.randn(mask_shape, dtype=torch.float64, requires_grad=True)

    def attention(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def by_hand(q, k, v, mask):
        return (q @ k.transpose(-2, -1) / 2.0 + (0 if mask is None else mask)).softmax(-1) @ v

    _assert_rewritten_with_exact_derivatives(attention, (q, k, v, mask), '_SoftmaxBackward', reference=by_hand)


@pytest.mark.parametrize('mask_shape', [None, (1, 3, 5, 5)])
def test_packed_qkv_attention_derivatives_match_finite_differences(mask_shape):
    """q, k, v split from one packed projection as timm's attention blocks do: same values, first and
    second derivatives of the projection against float64 finite differences."""
    torch.manual_seed(0)
    packed = torch.randn(2, 5, 3 * 3 * 4, dtype=torch.float64, requires_grad=True)
    mask = None if mask_shape is None else torch.randn(mask_shape, dtype=torch.float64, requires_grad=True)

    def attention(packed, mask):
        q, k, v = packed.reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def by_hand(packed, mask):
        q, k, v = packed.reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4).unbind(0)
        return (q @ k.transpose(-2, -1) / 2.0 + (0 if mask is None else mask)).softmax(-1) @ v

    _assert_rewritten_with_exact_derivatives(attention, (packed, mask), '_SoftmaxBackward', reference=by_hand)


@pytest.mark.parametrize('options', [{'dropout_p': 0.5}, {'is_causal': True}, {'attn_mask': 'bool'}])
def test_other_attention_forms_take_the_math_kernel(options):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 3, requires_grad=True) for _ in range(3))
    if options.get('attn_mask') == 'bool':
        options = {'attn_mask': torch.rand(4, 4) > 0.3}
    with double_backward_safe():
        out = F.scaled_dot_product_attention(q, k, v, **options)
    assert not _graph_has(out, '_SoftmaxBackward')
    (g,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    g.sum().backward()  # twice differentiable: the math kernel
    assert k.grad is not None


@pytest.mark.parametrize('model_name,kwargs', [
    ('vit_tiny_patch16_224', {'img_size': 32, 'patch_size': 8, 'depth': 2}),
    ('swin_tiny_patch4_window7_224', {'img_size': 32, 'window_size': 2, 'embed_dim': 12, 'depths': (2, 2, 1, 1),
                                      'num_heads': (1, 2, 2, 2)}),
])
def test_transformer_penalty_gradient_equals_unfused_double_backprop(model_name, kwargs):
    """ViT and Swin (LayerNorm, GELU, attention with a learnt position bias and shifted-window
    masks), attention fused (timm's Swin default is unfused): the rewritten ops give the parameter
    gradient of timm's own unfused attention."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=4, **kwargs).eval().double()
    x, y = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 3])

    def set_fused_attn(fused):
        for module in model.modules():
            if hasattr(module, 'fused_attn'):
                module.fused_attn = fused

    set_fused_attn(True)
    g, p = _penalty_gradients(model, x, y, double_backward_safe())
    with double_backward_safe():
        assert _graph_has(model(x), '_SoftmaxBackward')  # fused attention ran as its rewritten math form
    set_fused_attn(False)
    model.zero_grad()
    g_ref, p_ref = _penalty_gradients(model, x, y, contextlib.nullcontext())
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(p, p_ref, rtol=1e-9, atol=1e-12)
