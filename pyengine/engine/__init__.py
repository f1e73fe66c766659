"""Deterministic matching engine, plain typed Python.

``from pyengine.engine import Engine, SnapshotError`` -- see docs/engine.md.

``make build`` compiles ``numbers``, ``model``, ``snapshot``, ``core``, ``bulk`` and
``migration`` with mypyc (same source, see pyengine/ops/build_engine.py). The compiled modules are used only
while their stamp matches the sources; ``MATCHX_PURE_ENGINE=1`` forces the plain-Python
modules. ``NATIVE`` says which one runs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

from . import native_stamp as _build


def _load_plain_sources() -> None:
    """Import the hot modules from their .py files even when compiled ones sit beside them."""
    for name in _build.MODULES:  # dependency order (native_stamp.MODULES)
        full = f"{__name__}.{name}"
        spec = importlib.util.spec_from_file_location(full, _build.HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        spec.loader.exec_module(mod)


if os.environ.get("MATCHX_PURE_ENGINE") == "1":
    _load_plain_sources()
elif _build.built_files() and not _build.is_current():
    logging.getLogger(__name__).warning(
        "compiled engine is stale (sources changed since `make build`); running plain Python")
    _load_plain_sources()

# Compiled modules resolve their package imports through attributes (pyengine.engine.errors),
# which the import system sets only after this file ends: set it now.
sys.modules[__name__.rpartition(".")[0]].engine = sys.modules[__name__]

from .core import Engine  # noqa: E402
from .errors import SnapshotError  # noqa: E402

NATIVE: bool = not str(sys.modules[f"{__name__}.core"].__file__).endswith(".py")

__all__ = ["Engine", "SnapshotError", "NATIVE"]
