"""Import torchvision without loading ``torch._dynamo`` (about 2.5 s of CPU in every job that builds a model).

torchvision compiles one function lazily on its first call, so that eager-only users need not import dynamo
(``lazy_compile`` in ``torchvision/ops/roi_align.py``, pytorch/vision#8436), but the same module imports one
helper from ``torch._dynamo.utils`` at its top, and that import loads the whole of dynamo (``sympy``, the
symbolic tracer...): 2.5 of the 2.8 s that ``import torchvision`` took on 2 CPU cores (``python -X importtime``).
``evaluate`` and ``predict`` never need dynamo; a job that builds an optimizer or compiles or exports loads it anyway (torch
itself imports it on an optimizer's first ``add_param_group``), when it first needs it.

:func:`import_torchvision` imports torchvision with a stand-in for ``torch._dynamo.utils`` in
``sys.modules``: its ``is_compile_supported`` imports the real one when called, and any other name looked up
on it imports the real module and answers from it, so whatever else reaches for ``torch._dynamo.utils``
meanwhile gets what a plain import would have given. The stand-in leaves ``sys.modules`` before the function
returns.
"""

from __future__ import annotations

import importlib
import sys
import types

DYNAMO_UTILS = "torch._dynamo.utils"


def _is_compile_supported(device_type):
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


class _DynamoUtilsOnDemand(types.ModuleType):
    """Stands in for ``torch._dynamo.utils`` while torchvision is imported; imports it for any name it lacks."""

    def __getattr__(self, name):
        if name.startswith("__"):  # inspect and pickle probe every module in sys.modules for __file__ and the like
            raise AttributeError(name)
        if sys.modules.get(DYNAMO_UTILS) is self:
            del sys.modules[DYNAMO_UTILS]
        return getattr(importlib.import_module(DYNAMO_UTILS), name)


def import_torchvision():
    """``import torchvision``, leaving ``torch._dynamo`` unloaded until something uses it (see the module's doc)."""
    if "torchvision" in sys.modules or "torch._dynamo" in sys.modules or DYNAMO_UTILS in sys.modules:
        import torchvision

        return torchvision
    importlib.import_module("torch")  # the stand-in's parent package must be the real one

    stand_in = _DynamoUtilsOnDemand(DYNAMO_UTILS)
    stand_in.is_compile_supported = _is_compile_supported
    sys.modules[DYNAMO_UTILS] = stand_in
    try:
        import torchvision
    finally:
        if sys.modules.get(DYNAMO_UTILS) is stand_in:
            del sys.modules[DYNAMO_UTILS]
    return torchvision
