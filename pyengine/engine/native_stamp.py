"""Which compiled engine modules exist and whether they match the sources.

``python -m pyengine.ops.build_engine`` writes them; ``pyengine/engine/__init__.py`` reads this to
decide between the compiled and the plain modules.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Compiled together so their classes and calls stay native across module boundaries;
# listed in dependency order (numbers <- model <- columns <- snapcache <- snapshot <- core <- bulk,
# snapshot <- migration <- migration_pieces, migration_shadow).
MODULES = ("numbers", "model", "columns", "snapcache", "snapshot", "core", "bulk", "migration",
           "migration_pieces", "migration_shadow")
STAMP = HERE / "native.stamp"
GROUP = "pyengine.engine.native"


def sources_digest() -> str:
    h = hashlib.sha256()
    for m in MODULES:
        h.update(m.encode())
        h.update((HERE / f"{m}.py").read_bytes())
    return h.hexdigest()


def built_files() -> list[Path]:
    """Every extension module in the package directory (all of them come from the build; a
    module dropped from MODULES leaves one behind until the next build removes it)."""
    return sorted(HERE.glob("*.so"))


def is_current() -> bool:
    try:
        stamp = STAMP.read_text().strip()
    except OSError:
        return False
    return stamp == sources_digest() and len(built_files()) == len(MODULES) + 1
