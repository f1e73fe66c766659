"""Compile the engine's hot modules with mypyc (``make build`` runs this).

    python -m pyengine.ops.build_engine          # build in place when missing or stale
    python -m pyengine.ops.build_engine --check  # exit 0 when the build is current
    python -m pyengine.ops.build_engine --clean  # remove it: the engine runs as plain Python

The compiled extensions sit next to the sources (``pyengine/engine/core.*.so`` ...) with their
shared runtime ``native__mypyc.*.so`` and a stamp: the SHA-256 of the sources they were built
from. The package imports them only while the stamp matches the sources, so an edited
``core.py`` never runs as a stale binary. Without a C compiler or Python headers the build
stops with one clear line and the engine keeps running as plain Python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

# the package would warn that the compiled modules are stale: they are what this rebuilds
os.environ.setdefault("MATCHX_PURE_ENGINE", "1")

from pyengine.engine.native_stamp import (  # noqa: E402
    GROUP,
    HERE,
    MODULES,
    STAMP,
    built_files,
    is_current,
    sources_digest,
)

ROOT = HERE.parents[1]


def clean() -> None:
    for p in built_files():
        p.unlink()
    STAMP.unlink(missing_ok=True)


def build(quiet: bool = True) -> None:
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as e:
        raise SystemExit(f"build_engine: {e.name} is missing; run `pip install -e '.[dev]'`") from e
    if shutil.which(os.environ.get("CC", "cc")) is None:
        raise SystemExit("build_engine: no C compiler (cc); install gcc (Debian: apt install gcc)")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        raise SystemExit(f"build_engine: {include} is missing; install the Python headers "
                         "(Debian: apt install python3-dev)")
    clean()
    digest = sources_digest()
    paths = [str((HERE / f"{m}.py").relative_to(ROOT)) for m in MODULES]
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="matchx-mypyc-") as tmp:
        os.chdir(ROOT)
        try:
            # follow-imports=silent: the modules' imports (errors.py) are read, not compiled
            exts = mypycify(["--follow-imports=silent", *paths], only_compile_paths=paths,
                            separate=[(paths, GROUP)], target_dir=os.path.join(tmp, "c"),
                            opt_level="3")
            dist = Distribution({"name": "matchx-engine-native", "ext_modules": exts})
            cmd = dist.get_command_obj("build_ext")
            cmd.inplace = True
            cmd.build_temp = os.path.join(tmp, "obj")
            dist.verbose = 0 if quiet else 1
            cmd.ensure_finalized()
            cmd.run()
        finally:
            os.chdir(cwd)
    if len(built_files()) != len(MODULES) + 1:
        raise SystemExit(f"build_engine: expected {len(MODULES) + 1} extensions, found "
                         f"{[p.name for p in built_files()]}")
    STAMP.write_text(digest + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 0 if the build is current")
    ap.add_argument("--clean", action="store_true", help="remove the compiled extensions")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.clean:
        clean()
        print("build_engine: removed the compiled engine; it runs as plain Python")
        return 0
    if is_current():
        print("build_engine: compiled engine is current")
        return 0
    if args.check:
        print("build_engine: compiled engine missing or stale")
        return 1
    print(f"build_engine: compiling {', '.join(MODULES)} with mypyc (about a minute) ...",
          flush=True)
    build(quiet=not args.verbose)
    print(f"build_engine: done: {', '.join(p.name for p in built_files())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
