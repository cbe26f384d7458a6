"""TLSTM and SPP: native ops against the plain-PyTorch reference."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from her2kit.ops import SPP, TLSTM, native_available, spp, spp_reference, tlstm, tlstm_reference

needs_native = pytest.mark.skipif(not native_available(), reason="her2kit._C not built")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a-b| / max|b|."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_weights(C: int, K: int, dtype=torch.float64, seed: int = 0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    w = [
        torch.randn(4, 4 * K, C, generator=g, dtype=dtype) / C**0.5,
        torch.randn(4, 4 * K, generator=g, dtype=dtype) * 0.5,
        torch.randn(4, 4 * K, K, 3, generator=g, dtype=dtype) / (3 * K) ** 0.5,
        torch.randn(4, 3, K, generator=g, dtype=dtype) * 0.5,
    ]
    return [t.requires_grad_(requires_grad) for t in w]


def run_both(x, weights, grad_seed=1, fns=(tlstm, tlstm_reference)):
    """Outputs and input/weight gradients of the native op and the reference."""
    out = []
    for fn in fns:
        inputs = [x.detach().clone().requires_grad_(True)] + [
            w.detach().clone().requires_grad_(True) for w in weights
        ]
        y = fn(*inputs)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=y.dtype)
        grads = torch.autograd.grad(y, inputs, g)
        out.append((y.detach(), grads))
    return out


def test_native_is_built():
    assert native_available(), "her2kit._C failed to import: the native ops are not built"


# (B, C, H, W, K): odd shapes, H != W, one-pixel rows and columns, Her2Net-like sizes.
SHAPES = [
    (2, 3, 5, 5, 4),
    (1, 2, 1, 1, 3),
    (1, 3, 1, 7, 2),
    (2, 2, 6, 1, 3),
    (3, 4, 4, 9, 5),
    (2, 3, 9, 4, 4),
    (1, 4, 31, 31, 4),
    (1, 2, 63, 63, 2),
    # The CPU kernels' compiled-in hidden sizes (K = 16, 32) and vectorised
    # layout changes (C, K >= 8), with ragged edges.
    (3, 16, 9, 11, 16),
    (1, 9, 5, 6, 32),
]


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_tlstm_matches_reference(shape, dtype):
    B, C, H, W, K = shape
    x = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(2), dtype=dtype)
    weights = make_weights(C, K, dtype)
    (yn, gn), (yr, gr) = run_both(x, weights)
    assert yn.shape == (B, 4 * K, H, W)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel_err(yn, yr) < tol
    for name, a, b in zip(["x", "w_x", "b_x", "w_h", "peep"], gn, gr, strict=True):
        assert rel_err(a, b) < tol, name


@needs_native
@pytest.mark.parametrize("shape", [(1, 2, 3, 4, 2), (2, 1, 3, 3, 1), (1, 1, 1, 3, 2)])
def test_tlstm_gradcheck(shape):
    B, C, H, W, K = shape
    x = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    weights = make_weights(C, K, requires_grad=True)
    assert torch.autograd.gradcheck(tlstm, [x, *weights])


@needs_native
def test_tlstm_opcheck():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    weights = make_weights(3, 2, requires_grad=True)
    torch.library.opcheck(torch.ops.her2kit.tlstm_forward.default, (x, *weights))
    hidden, gates, cells, hist = torch.ops.her2kit.tlstm_forward(
        x.detach(), *[w.detach() for w in weights]
    )
    grad = torch.randn_like(hidden)
    w_x, _b, w_h, peep = (w.detach() for w in weights)
    torch.library.opcheck(
        torch.ops.her2kit.tlstm_backward.default,
        (grad, x.detach(), w_x, w_h, peep, gates, cells, hist),
    )


def _swept(x, weights, s):
    """Native hidden map of sweep s alone (the other sweeps' weights zeroed)."""
    w = [t.clone() for t in weights]
    for t in w:
        keep = t[s].clone()
        t.zero_()
        t[s] = keep
    y = tlstm(x, *w)
    K = weights[2].shape[2]
    others = [y[:, K * o : K * o + K] for o in range(4) if o != s]
    assert all(torch.count_nonzero(o) == 0 for o in others)
    return y[:, K * s : K * s + K]


@needs_native
@pytest.mark.parametrize("s", range(4), ids=["down", "up", "right", "left"])
def test_tlstm_each_sweep_alone(s):
    """Each sweep is the down sweep of the flipped/transposed image."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    weights = make_weights(3, 3)
    got = _swept(x, weights, s)
    moved = [t.clone() for t in weights]
    for t in moved:
        t[0] = t[s]
    transform = {
        0: (lambda a: a, lambda a: a),
        1: (lambda a: a.flip(2), lambda a: a.flip(2)),
        2: (lambda a: a.transpose(2, 3), lambda a: a.transpose(2, 3)),
        3: (lambda a: a.transpose(2, 3).flip(2), lambda a: a.flip(2).transpose(2, 3)),
    }[s]
    want = transform[1](_swept(transform[0](x).contiguous(), moved, 0))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@needs_native
def test_tlstm_down_sweep_sees_only_its_trapezoid():
    """Down sweep: pixel (y, x) depends on rows <= y within |dx| <= y - y'."""
    torch.manual_seed(4)
    x = torch.randn(1, 2, 7, 9, dtype=torch.float64)
    weights = make_weights(2, 2)
    base = _swept(x, weights, 0)
    y0, x0 = 4, 4
    for y1, x1, inside in [
        (5, 4, False),
        (2, 7, False),
        (2, 6, True),
        (4, 4, True),
        (0, 0, True),
        (1, 0, False),
    ]:
        xp = x.clone()
        xp[0, :, y1, x1] += 1.0
        changed = (_swept(xp, weights, 0)[0, :, y0, x0] - base[0, :, y0, x0]).abs().max() > 0
        assert bool(changed) == inside, (y1, x1)


@needs_native
def test_tlstm_deterministic():
    torch.manual_seed(5)
    x = torch.randn(4, 8, 20, 20)
    weights = make_weights(8, 8, torch.float32)
    ((y1, g1),) = run_both(x, weights, fns=(tlstm,))
    ((y2, g2),) = run_both(x, weights, fns=(tlstm,))
    assert torch.equal(y1, y2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


_CACHE_SCRIPT = """
import sys, torch
from her2kit.ops import tlstm
outs = []
for seed, (B, C, H, W, K) in enumerate([(2, 24, 40, 30, 16), (2, 8, 30, 40, 32)] * 2):
    torch.manual_seed(seed % 2)
    x = torch.randn(B, C, H, W, requires_grad=True)
    w = [torch.randn(4, 4 * K, C) / C**0.5, torch.randn(4, 4 * K),
         torch.randn(4, 4 * K, K, 3) / (3 * K) ** 0.5, torch.randn(4, 3, K)]
    w = [t.requires_grad_() for t in w]
    y = tlstm(x, *w)
    outs += [y.detach(), *torch.autograd.grad(y, [x, *w], torch.randn_like(y))]
torch.save(outs, sys.argv[1])
"""


@needs_native
def test_tlstm_buffer_cache_changes_nothing(tmp_path):
    """The CPU op reuses its large buffers across calls (HER2KIT_TLSTM_CACHE_MB):
    results are bit-identical with the cache off, and on buffers that calls of
    other shapes left behind."""
    results = []
    for mb in ["0", "256"]:
        path = tmp_path / f"cache_{mb}.pt"
        env = {**os.environ, "HER2KIT_TLSTM_CACHE_MB": mb}
        cmd = [sys.executable, "-c", _CACHE_SCRIPT, str(path)]
        subprocess.run(cmd, check=True, env=env, timeout=300)
        results.append(torch.load(path))
    off, on = results
    assert len(off) == len(on) == 24
    assert all(torch.equal(a, b) for a, b in zip(off, on, strict=True))
    # Calls 3 and 4 repeat calls 1 and 2 on the buffers those left behind.
    assert all(torch.equal(a, b) for a, b in zip(on[:12], on[12:], strict=True))


def test_tlstm_errors():
    x = torch.randn(1, 3, 4, 4)
    w = make_weights(3, 2, torch.float32)
    with pytest.raises(ValueError, match="float32 or float64"):
        tlstm(x.int(), *w)
    with pytest.raises(ValueError, match="4-D"):
        tlstm(x[0], *w)
    with pytest.raises(ValueError, match="w_x must have shape"):
        tlstm(torch.randn(1, 5, 4, 4), *w)
    with pytest.raises(ValueError, match="peep must have shape"):
        tlstm(x, w[0], w[1], w[2], w[3][:, :2])
    with pytest.raises(ValueError, match="dtype"):
        tlstm(x, w[0].double(), *w[1:])
    with pytest.raises(ValueError, match="is on meta"):
        tlstm(x, w[0].to("meta"), *w[1:])
    empty = make_weights(3, 2, torch.float32)
    with pytest.raises(ValueError, match="hidden size K"):
        tlstm(x, empty[0][:, :0], empty[1][:, :0], empty[2][:, :0, :0], empty[3][:, :, :0])


def test_16_bit_inputs_run_in_float32():
    """QA: a model under torch.autocast (bfloat16 convolutions) stopped at its
    first SPP/TLSTM ("x must be float32"); 16-bit inputs now run in float32
    and come back in their own dtype."""
    x = torch.randn(2, 3, 7, 6)
    w = make_weights(3, 2, torch.float32)
    xb = x.bfloat16()
    want = tlstm(xb.float(), *w)
    got = tlstm(xb, *w)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want.bfloat16())
    # all-16-bit weights (a model cast with .half()): the same float32 arithmetic
    got_half = tlstm(x.half(), *[t.half() for t in w])
    assert got_half.dtype == torch.float16
    assert torch.equal(got_half, tlstm(x.half().float(), *[t.half().float() for t in w]).half())
    # SPP: a maximum is exact, so 16-bit pooling equals float32 pooling
    assert torch.equal(spp(xb), spp(xb.float()).bfloat16()) and spp(xb).dtype == torch.bfloat16
    # the reference (no native op) under autocast runs its steps in float32 too
    import her2kit.ops.functional as functional

    want_ref = tlstm_reference(xb.float(), *w).bfloat16()
    saved = functional._use_native
    functional._use_native = lambda t: False
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(tlstm(xb, *w), want_ref)
    finally:
        functional._use_native = saved
    # under autocast, gradients reach the float32 weights and the input
    m = TLSTM(3, 2, 4)
    xi = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = spp(F.conv2d(m(xi), torch.randn(4, 4, 1, 1)))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert xi.grad is not None and torch.isfinite(xi.grad).all() and xi.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())


@needs_native
def test_second_derivatives_are_refused_not_wrong():
    """QA: with create_graph=True the native ops' second derivatives came back None."""
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    w = make_weights(3, 2, torch.float32)
    with pytest.raises(RuntimeError, match="native tlstm is differentiable once"):
        torch.autograd.grad((tlstm(x, *w) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="native spp is differentiable once"):
        torch.autograd.grad((spp(x) ** 2).sum(), x, create_graph=True)
    g = torch.autograd.grad((tlstm(x, *w) ** 2).sum(), x)[0]  # once: fine
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@needs_native
def test_tlstm_raw_op_errors():
    x = torch.randn(1, 3, 4, 4)
    w = make_weights(3, 2, torch.float32)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.her2kit.tlstm_forward(x.int(), *w)
    with pytest.raises(RuntimeError, match="w_h must have shape"):
        torch.ops.her2kit.tlstm_forward(x, w[0], w[1], w[2][:, :, :, :2], w[3])
    with pytest.raises(RuntimeError, match="b_x has dtype"):
        torch.ops.her2kit.tlstm_forward(x, w[0], w[1].double(), w[2], w[3])


def test_tlstm_module():
    m = TLSTM(3, 4, 5)
    assert torch.all(m.b_x[:, 4:8] == 1) and torch.all(m.b_x[:, :4] == 0)
    x = torch.randn(2, 3, 6, 7)
    y = m(x)
    assert y.shape == (2, 5, 6, 7)
    y.square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    want = F.conv2d(tlstm_reference(x, m.w_x, m.b_x, m.w_h, m.peep), m.out.weight, m.out.bias)
    assert rel_err(y.detach(), want.detach()) < 1e-5


# SPP --------------------------------------------------------------------------------


def spp_with_indices(x, levels):
    """adaptive_max_pool2d per level: values and flat argmax indices."""
    vals, idx = zip(
        *(F.adaptive_max_pool2d(x, n, return_indices=True) for n in levels), strict=True
    )
    return torch.cat([v.flatten(2) for v in vals], 2), torch.cat([i.flatten(2) for i in idx], 2)


SPP_CASES = [
    ((2, 3, 7, 9), (1, 2, 3, 6)),
    ((1, 1, 1, 1), (1, 2, 3, 6)),
    ((2, 2, 63, 63), (1, 2, 3, 6)),
    ((1, 2, 5, 31), (4, 3, 5)),
    ((1, 2, 10, 8), (6, 2, 6, 3, 1)),
    ((2, 1, 2, 3), (7,)),
]


@needs_native
@pytest.mark.parametrize(
    "case", SPP_CASES, ids=lambda c: "x".join(map(str, c[0])) + "-" + "".join(map(str, c[1]))
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_spp_matches_adaptive_max_pool(case, dtype):
    shape, levels = case
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    out, idx = torch.ops.her2kit.spp_forward(x, list(levels))
    want, want_idx = spp_with_indices(x, levels)
    assert torch.equal(out, want)
    assert torch.equal(idx, want_idx)
    g = torch.randn_like(want)
    (gx,) = torch.autograd.grad(spp(x, levels), x, g)
    (gw,) = torch.autograd.grad(spp_reference(x, levels), x, g)
    torch.testing.assert_close(gx, gw, rtol=1e-6, atol=1e-6)


@needs_native
def test_spp_ties_and_nan_follow_pytorch():
    x = torch.randint(0, 3, (2, 3, 13, 11)).double()  # many equal maxima
    x[0, 0, 5, 5] = float("nan")
    x[1, 2, 0, 0] = float("nan")
    x[1, 2, 12, 10] = float("nan")
    levels = [1, 2, 3, 6, 4]
    out, idx = torch.ops.her2kit.spp_forward(x, levels)
    want, want_idx = spp_with_indices(x, levels)
    assert torch.equal(out.isnan(), want.isnan())
    assert torch.equal(out.nan_to_num(), want.nan_to_num())
    assert torch.equal(idx, want_idx)


@needs_native
def test_spp_gradcheck_and_opcheck():
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: spp(t, (1, 2, 3)), [x])
    torch.library.opcheck(torch.ops.her2kit.spp_forward.default, (x, [1, 2, 3, 6]))
    out, idx = torch.ops.her2kit.spp_forward(x.detach(), [1, 2, 3, 6])
    torch.library.opcheck(
        torch.ops.her2kit.spp_backward.default, (torch.randn_like(out), idx, 5, 6)
    )


@needs_native
def test_spp_deterministic():
    x = torch.randn(4, 16, 30, 30)
    g = torch.randn(4, 16, 50)
    runs = []
    for _ in range(2):
        xi = x.clone().requires_grad_(True)
        y = spp(xi)
        runs.append((y.detach(), torch.autograd.grad(y, xi, g)[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_spp_errors_and_module():
    with pytest.raises(ValueError, match="4-D"):
        spp(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="float32 or float64"):
        spp(torch.zeros(1, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="levels"):
        spp(torch.randn(1, 1, 4, 4), (2, 0))
    with pytest.raises(ValueError, match="levels"):
        SPP(())
    for levels in ((2**32,), (2**32, 1), (2.7,), (5000,)):  # QA: 2**32 overflowed n^2 and crashed
        with pytest.raises(ValueError, match=r"integers 1\.\.4096"):
            spp(torch.randn(1, 1, 2, 2), levels)
    m = SPP((1, 2, 4))
    assert m.bins == 21
    assert m(torch.randn(2, 3, 9, 5)).shape == (2, 3, 21)


@needs_native
def test_spp_raw_op_errors():
    for levels in ([1, -2], [2**32], [2**32, 1]):
        with pytest.raises(RuntimeError, match=r"every level must be 1\.\.4096"):
            torch.ops.her2kit.spp_forward(torch.randn(1, 1, 4, 4), levels)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.her2kit.spp_forward(torch.zeros(1, 1, 4, 4, dtype=torch.int32), [1])
    out, idx = torch.ops.her2kit.spp_forward(torch.randn(1, 1, 4, 4), [2])
    with pytest.raises(RuntimeError, match="indices must be int64"):
        torch.ops.her2kit.spp_backward(out, idx.int(), 4, 4)
    with pytest.raises(RuntimeError, match="outside the 2 x 2 plane"):
        torch.ops.her2kit.spp_backward(out, idx, 2, 2)


def test_fallback_warns_once_and_uses_reference():
    code = (
        "import sys, warnings\n"
        "sys.modules['her2kit._C'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import torch\n"
        "    from her2kit.ops import tlstm, tlstm_reference, spp, native_available, TLSTM\n"
        "    import her2kit.ops.native\n"
        "    m = TLSTM(2, 2, 3)\n"
        "    x = torch.randn(1, 2, 3, 4)\n"
        "    y = m(x); y2 = m(x); s = spp(x)\n"
        "ours = [str(i.message) for i in w if 'her2kit native ops unavailable' in str(i.message)]\n"
        "assert len(ours) == 1, ours\n"
        "assert not native_available()\n"
        "assert y.shape == (1, 3, 3, 4) and s.shape == (1, 2, 50)\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


# CUDA -------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
class TestCUDA:
    @pytest.mark.parametrize("shape", [(2, 3, 5, 7, 4), (1, 4, 31, 31, 8), (2, 3, 9, 4, 3)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
    def test_tlstm_cuda_matches_cpu_reference(self, shape, dtype):
        import her2kit.ops.native as native

        assert native.cuda_built(), "CUDA device present but her2kit._C built without CUDA"
        B, C, H, W, K = shape
        x = torch.randn(B, C, H, W, dtype=dtype)
        weights = make_weights(C, K, dtype)
        (_, _), (yr, gr) = run_both(x, weights)
        xs = x.cuda().requires_grad_(True)
        ws = [w.cuda().requires_grad_(True) for w in weights]
        y = tlstm(xs, *ws)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        grads = torch.autograd.grad(y, [xs, *ws], g.cuda())
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert rel_err(y.detach().cpu(), yr) < tol
        for a, b in zip(grads, gr, strict=True):
            assert rel_err(a.cpu(), b) < tol

    def test_tlstm_cuda_gradcheck(self):
        x = torch.randn(1, 2, 3, 4, dtype=torch.float64, device="cuda", requires_grad=True)
        weights = [w.cuda().requires_grad_(True) for w in make_weights(2, 2)]
        assert torch.autograd.gradcheck(tlstm, [x, *weights])

    @pytest.mark.parametrize("case", SPP_CASES[:4])
    def test_spp_cuda(self, case):
        shape, levels = case
        x = torch.randn(shape, device="cuda", requires_grad=True)
        out, idx = torch.ops.her2kit.spp_forward(x, list(levels))
        want, want_idx = spp_with_indices(x, levels)
        assert torch.equal(out, want) and torch.equal(idx, want_idx)
        g = torch.randn_like(want)
        (gx,) = torch.autograd.grad(spp(x, levels), x, g)
        (gw,) = torch.autograd.grad(spp_reference(x, levels), x, g)
        torch.testing.assert_close(gx, gw)

    def test_cuda_opcheck(self):
        x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device="cuda", requires_grad=True)
        weights = [w.cuda().requires_grad_(True) for w in make_weights(3, 2)]
        torch.library.opcheck(torch.ops.her2kit.tlstm_forward.default, (x, *weights))
        torch.library.opcheck(torch.ops.her2kit.spp_forward.default, (x, [1, 2, 3]))


@needs_native
@pytest.mark.parametrize("shape", [(2, 3, 5, 5, 4), (2, 3, 4, 7, 3), (1, 2, 1, 6, 2)])
def test_stepwise_driver_matches(shape):
    """The step-at-a-time driver CUDA uses, run with the CPU kernels."""
    B, C, H, W, K = shape
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    w_x, b_x, w_h, peep = make_weights(C, K)
    ops = torch.ops.her2kit
    fwd = ops.tlstm_forward(x, w_x, b_x, w_h, peep)
    fwd_s = ops._tlstm_forward_stepwise(x, w_x, b_x, w_h, peep)
    for a, b in zip(fwd, fwd_s, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(fwd[0])
    bwd = ops.tlstm_backward(grad, x, w_x, w_h, peep, *fwd[1:])
    bwd_s = ops._tlstm_backward_stepwise(grad, x, w_x, w_h, peep, *fwd[1:])
    for a, b in zip(bwd, bwd_s, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_native
def test_torch_compile_traces_native_ops():
    m, pool = TLSTM(3, 4, 5), SPP((1, 2))
    x = torch.randn(2, 3, 6, 7, requires_grad=True)

    def f(t):
        return pool(m(t)).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    a, b = f(x), compiled(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0])


@needs_native
def test_bench_records(tmp_path):
    from her2kit import bench

    records = bench.run(
        quick=True,
        progress=False,
        tlstm_shapes=[(1, 2, 4, 5, 2)],
        spp_shapes=[(1, 2, 7, 6)],
        matmul_n=128,
    )
    assert [r["name"] for r in records] == ["tlstm_fwd", "tlstm_fwd_bwd", "spp_fwd", "spp_fwd_bwd"]
    keys = {
        "name",
        "shape",
        "reference_ms",
        "native_ms",
        "speedup",
        "device",
        "gflops",
        "limit_gflops",
    }
    for r in records:
        assert set(r) == keys
        assert r["native_ms"] > 0 and r["reference_ms"] > 0 and r["limit_gflops"] > 0
        assert r["device"] == "cpu"
    assert bench.tlstm_flops(1, 2, 4, 5, 2) == 4 * (2 * 20 * 2 * 8 + 2 * 20 * 6 * 8)
    assert bench.spp_ops(1, 1, 4, 4, (1, 2)) == 16 + 16
    out = tmp_path / "b.json"
    bench.write_json(records, str(out))
    import json

    assert json.loads(out.read_text()) == records
    assert list(tmp_path.iterdir()) == [out]


def test_tlstm_runs_under_inference_mode():
    # Worker threads must inherit inference mode: the segmenter predicts under it.
    torch.manual_seed(0)
    m = TLSTM(4, 3, 5).eval()
    x = torch.randn(2, 4, 9, 7)
    with torch.no_grad():
        expected = m(x)
    with torch.inference_mode():
        got = m(x)
    torch.testing.assert_close(got, expected)
