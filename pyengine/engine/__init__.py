"""Pure-Python deterministic matching engine.

``from pyengine.engine import Engine, SnapshotError`` -- see docs/engine.md.
"""

from .core import Engine
from .errors import CodecError, SnapshotError

__all__ = ["Engine", "SnapshotError", "CodecError"]
