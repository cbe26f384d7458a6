"""Her2Net's special layers as ops: TLSTM (trapezoidal LSTM) and SPP.

Importing this package imports torch and tries the compiled ops
(``her2kit._C``, registered as ``torch.ops.her2kit.*``); when they are
missing it warns once and everything runs on the plain-PyTorch reference.
"""

from .functional import native_available, spp, tlstm
from .modules import SPP, TLSTM
from .reference import spp_reference, tlstm_reference

__all__ = ["TLSTM", "SPP", "tlstm", "spp", "tlstm_reference", "spp_reference", "native_available"]
