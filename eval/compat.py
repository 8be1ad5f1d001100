"""The one place that works around torchvision on a CPU-only PyTorch.

torchvision from PyPI is a CUDA build: with the CPU torch, `import torchvision` fails while it
registers its fake CUDA kernels (`operator torchvision::nms does not exist`). Putting an empty module
in `sys.modules["torchvision._meta_registrations"]` first skips that registration; transforms and
model definitions (all that clean-fid and the Inception-sized benchmark network need) then work,
nms and torchvision.io do not. The shim is applied only when the plain import fails.
"""

from __future__ import annotations

import importlib
import sys
import types
from types import ModuleType

_META = "torchvision._meta_registrations"


def import_torchvision() -> ModuleType:
    """`import torchvision`, with the CPU shim applied only if the plain import fails."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import leaves half-initialised modules behind
    sys.modules[_META] = types.ModuleType(_META)
    return importlib.import_module("torchvision")


def import_cleanfid_fid() -> ModuleType:
    """`cleanfid.fid` (it imports torchvision at module level, hence the shim)."""
    import_torchvision()
    return importlib.import_module("cleanfid.fid")
