"""Functional TLSTM and SPP: the native ops when built, else the reference.

Weight layout of :func:`tlstm` (sweeps down, up, right, left; gates i, f, g, o):

- ``w_x`` (4, 4K, C): 1x1 input projection of each sweep; ``b_x`` (4, 4K).
- ``w_h`` (4, 4K, K, 3): width-3 recurrent convolution along the row
  (``conv1d`` weight: tap 0 reads index n-1, tap 2 reads n+1 of the previous
  step's hidden state, in increasing image index for every sweep).
- ``peep`` (4, 3, K): peephole vectors p_i, p_f, p_o.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import native
from .reference import spp_reference, tlstm_reference

__all__ = ["tlstm", "spp", "native_available"]

_warned_device: set[str] = set()


def native_available() -> bool:
    """True when her2kit._C (the compiled ops) was loaded."""
    return native.available()


def _use_native(x: torch.Tensor) -> bool:
    if not native.available():
        return False
    if x.device.type == "cpu":
        return True
    if x.device.type == "cuda" and native.cuda_built():
        return True
    if x.device.type not in _warned_device:
        _warned_device.add(x.device.type)
        warnings.warn(
            f"her2kit native ops were not built for {x.device.type}; using the "
            "plain-PyTorch reference there",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


MAX_SPP_LEVEL = 4096

#: 16-bit floats: the kernels run them in float32 (autocast's convolutions give
#: them; QA: a model under torch.autocast stopped at its first SPP)
_HALF = (torch.float16, torch.bfloat16)


def _in_float32(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The tensors, 16-bit ones as float32 (differentiably): as autocast itself
    runs recurrences and reductions, so the TLSTM's hundreds of steps do not
    accumulate 16-bit rounding."""
    return [t.float() if getattr(t, "dtype", None) in _HALF else t for t in tensors]


def _check_x(op: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64, *_HALF):
        raise ValueError(f"{op}: x must be float32 or float64 (or 16-bit, run in float32), got {x.dtype}")
    if min(x.shape) == 0:
        raise ValueError(f"{op}: x has an empty dimension, shape {tuple(x.shape)}")


def _check_tlstm(x, w_x, b_x, w_h, peep) -> int:
    _check_x("tlstm", x)
    if w_h.dim() != 4:
        raise ValueError(f"tlstm: w_h must be 4-D (4, 4K, K, 3), got shape {tuple(w_h.shape)}")
    K = w_h.shape[2]
    C = x.shape[1]
    if K < 1:
        raise ValueError(f"tlstm: the hidden size K (w_h's third dimension) must be >= 1, got {K}")
    want = {
        "w_x": (w_x, (4, 4 * K, C), "(4, 4K, C)"),
        "b_x": (b_x, (4, 4 * K), "(4, 4K)"),
        "w_h": (w_h, (4, 4 * K, K, 3), "(4, 4K, K, 3)"),
        "peep": (peep, (4, 3, K), "(4, 3, K)"),
    }
    for name, (t, shape, layout) in want.items():
        if tuple(t.shape) != shape:
            raise ValueError(
                f"tlstm: {name} must have shape {layout} = {shape} for C={C}, K={K}, "
                f"got {tuple(t.shape)}"
            )
        if t.dtype != x.dtype:
            raise ValueError(f"tlstm: {name} has dtype {t.dtype} but x has {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"tlstm: {name} is on {t.device} but x is on {x.device}")
    return K


def tlstm(
    x: torch.Tensor,
    w_x: torch.Tensor,
    b_x: torch.Tensor,
    w_h: torch.Tensor,
    peep: torch.Tensor,
    w_out: torch.Tensor | None = None,
    b_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Trapezoidal LSTM: four sweeps (down, up, right, left) over x (B, C, H, W).

    Returns the concatenated hidden maps (B, 4K, H, W), or, with ``w_out``
    (O, 4K, 1, 1) and optional ``b_out`` (O,), their 1x1 convolution
    (B, O, H, W). Weight layout: see the module docstring. h and c start at 0.
    Raises ValueError on a wrong shape, dtype or device. 16-bit inputs
    (float16/bfloat16, e.g. under ``torch.autocast``) are computed in float32
    and the result is given back in x's dtype.

    On the CPU the native op keeps its large buffers (about 100 MB for a
    fwd+bwd of B=4, C=64, 63x63, K=32) for reuse by later calls, at most
    ``HER2KIT_TLSTM_CACHE_MB`` megabytes (environment, read once; default
    256, 0 turns the cache off).
    """
    _check_x("tlstm", x)
    dtype = x.dtype
    if any(getattr(t, "dtype", None) in _HALF for t in (x, w_x, b_x, w_h, peep, w_out, b_out)):
        x, w_x, b_x, w_h, peep, w_out, b_out = _in_float32(x, w_x, b_x, w_h, peep, w_out, b_out)
        # autocast off inside: it would cast the reference's per-step convolutions back to 16 bits
        with torch.autocast(x.device.type, enabled=False):
            return tlstm(x, w_x, b_x, w_h, peep, w_out, b_out).to(dtype)
    _check_tlstm(x, w_x, b_x, w_h, peep)
    if _use_native(x):
        h = torch.ops.her2kit.tlstm_forward(x, w_x, b_x, w_h, peep)[0]
    else:
        h = tlstm_reference(x, w_x, b_x, w_h, peep)
    if w_out is not None:
        h = F.conv2d(h, w_out, b_out)
    return h


def spp(x: torch.Tensor, levels: Sequence[int] = (1, 2, 3, 6)) -> torch.Tensor:
    """Spatial pyramid max pooling of x (B, C, H, W) into (B, C, sum n^2).

    Level n cuts the image into n x n bins with PyTorch's adaptive bounds
    (start floor(i*H/n), end ceil((i+1)*H/n)); levels are concatenated in the
    order given, bins row-major within a level. Raises ValueError on a wrong
    input or level. 16-bit inputs are pooled in float32 (a maximum is exact,
    so the result, in x's dtype, is the same).
    """
    _check_x("spp", x)
    if x.dtype in _HALF:
        with torch.autocast(x.device.type, enabled=False):
            return spp(x.float(), levels).to(x.dtype)
    given = list(levels)
    try:
        levels = [int(n) for n in given]
    except (TypeError, ValueError):
        levels = []
    # an integer level n gives n^2 bins: more than MAX_SPP_LEVEL^2 is a mistake
    # (QA: 2**32 overflowed n^2 in the native op and wrote past its output)
    if (not levels or levels != given or min(levels) < 1 or max(levels) > MAX_SPP_LEVEL):
        raise ValueError(f"spp: levels must be a non-empty list of integers 1..{MAX_SPP_LEVEL}, got {given}")
    if _use_native(x):
        return torch.ops.her2kit.spp_forward(x, levels)[0]
    return spp_reference(x, levels)
