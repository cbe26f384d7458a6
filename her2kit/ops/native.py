"""The native her2kit ops: loading ``her2kit._C``, fake kernels and autograd.

``torch.ops.her2kit.*`` are defined in C++ (csrc/cpu/registration.cpp). Here
we add what PyTorch needs around them: fake (meta) kernels so that
``torch.compile`` can trace them, and autograd formulas that call the native
backward ops. Importing this module never fails: when the extension is
missing it warns once and ``available()`` is False.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["available", "cuda_built", "load_error"]

load_error: str | None = None
try:
    from her2kit import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)
except ImportError as exc:  # pragma: no cover - depends on the build
    _C = None
    load_error = str(exc)
    warnings.warn(
        f"her2kit native ops unavailable ({exc}); TLSTM and SPP fall back to the "
        "plain-PyTorch reference (slow). Rebuild with `pip install -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def available() -> bool:
    """True when the compiled ops were loaded."""
    return _C is not None


def cuda_built() -> bool:
    """True when the compiled ops include the CUDA kernels."""
    return _C is not None and bool(_C.cuda_built())


if _C is not None:

    @torch.library.register_fake("her2kit::tlstm_forward")
    def _tlstm_forward_fake(x, w_x, b_x, w_h, peep):
        B, _, H, W = x.shape
        K = w_h.shape[2]
        P = B * H * W
        return (
            x.new_empty((B, 4 * K, H, W)),
            x.new_empty((2, P, 8 * K)),
            x.new_empty((2, P, 2 * K)),
            x.new_empty((4, P, 3 * K)),
        )

    @torch.library.register_fake("her2kit::tlstm_backward")
    def _tlstm_backward_fake(grad_hidden, x, w_x, w_h, peep, gates, cells, hist):
        return (
            torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(w_x, memory_format=torch.contiguous_format),
            w_x.new_empty((4, w_x.shape[1])),
            torch.empty_like(w_h, memory_format=torch.contiguous_format),
            torch.empty_like(peep, memory_format=torch.contiguous_format),
        )

    @torch.library.register_fake("her2kit::spp_forward")
    def _spp_forward_fake(x, levels):
        B, C = x.shape[:2]
        S = sum(int(n) * int(n) for n in levels)
        return x.new_empty((B, C, S)), x.new_empty((B, C, S), dtype=torch.long)

    @torch.library.register_fake("her2kit::spp_backward")
    def _spp_backward_fake(grad, indices, height, width):
        return grad.new_empty((grad.shape[0], grad.shape[1], height, width))

    def _tlstm_setup(ctx, inputs, output):
        x, w_x, _b_x, w_h, peep = inputs
        _hidden, gates, cells, hist = output
        ctx.save_for_backward(x, w_x, w_h, peep, gates, cells, hist)
        # gates/cells/hist are saved activations, not results: no gradient
        # flows into them, and autograd must not allocate zeros for them.
        ctx.mark_non_differentiable(gates, cells, hist)
        ctx.set_materialize_grads(False)

    def _once(name: str) -> None:
        # autograd runs a backward with grad mode on only for create_graph=True:
        # the native backward ops have no derivative of their own, and the
        # second derivative would come back as None (QA), so say it instead
        if torch.is_grad_enabled():
            raise RuntimeError(f"her2kit's native {name} is differentiable once: a second derivative "
                               "(create_graph=True) is not supported; use her2kit.ops.reference for that")

    def _tlstm_backward(ctx, grad_hidden, _g_gates, _g_cells, _g_hist):
        _once("tlstm")
        x, w_x, w_h, peep, gates, cells, hist = ctx.saved_tensors
        if grad_hidden is None:
            return None, None, None, None, None
        return torch.ops.her2kit.tlstm_backward(
            grad_hidden.contiguous(), x, w_x, w_h, peep, gates, cells, hist
        )

    torch.library.register_autograd(
        "her2kit::tlstm_forward", _tlstm_backward, setup_context=_tlstm_setup
    )

    def _spp_setup(ctx, inputs, output):
        x, _levels = inputs
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.hw = (x.shape[2], x.shape[3])

    def _spp_backward(ctx, grad, _g_idx):
        _once("spp")
        (indices,) = ctx.saved_tensors
        gin = torch.ops.her2kit.spp_backward(grad.contiguous(), indices, *ctx.hw)
        return gin, None

    torch.library.register_autograd("her2kit::spp_forward", _spp_backward, setup_context=_spp_setup)
