"""Class data sharing for the member JVM: dump the classes a member loads into an archive.

    python -m pyengine.ops.build_cds            # what `make build` runs
    python -m pyengine.ops.build_cds --jar J    # an archive for another copy of the jar

A member's JVM (started by ``pyengine/jvm.py`` through JPype) loads and verifies some 2,400
classes (Aeron, Agrona, the shim, JPype's, the JDK's) before its media driver, archive and
consensus module run. With an archive made from the list of those classes
(``java-cluster/cds/member.classlist``, written by a member run with
``-XX:DumpLoadedClassList``), the JVM maps them already parsed and verified instead.
``jvm.start`` passes ``-XX:SharedArchiveFile`` when the archive sits beside the jar
(``matchx-member.jsa``) and is newer than it; without it, or when the JVM finds it does not fit
(another JDK, another class path), everything starts as before, only slower. Numbers:
docs/operations.md ("What a restart costs").

The archive is specific to the JDK build and to the class path (the jar's path, size and time,
then JPype's support jar): it is made by the JDK JPype starts, for the path the jar has, and
made again whenever the jar changes (``make build``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pyengine import jvm

CLASSLIST = jvm.REPO_ROOT / "java-cluster" / "cds" / "member.classlist"


def java_executable() -> Path:
    """The ``java`` of the JDK whose libjvm JPype loads (an archive only fits the JVM build
    that wrote it)."""
    import jpype

    libjvm = Path(jpype.getDefaultJVMPath()).resolve()
    # <home>/lib/server/libjvm.so (JDK 9+)
    for home in (libjvm.parent.parent.parent, libjvm.parent.parent):
        java = home / "bin" / "java"
        if java.is_file():
            return java
    raise SystemExit(f"build_cds: no java executable beside {libjvm}")


def build(jar: Path, classlist: Path, out: Path | None = None) -> Path:
    out = out or jvm.cds_archive(jar)
    if not classlist.is_file():
        raise SystemExit(f"build_cds: class list {classlist} not found")
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    cmd = [str(java_executable()), "-Xshare:dump", f"-XX:SharedClassListFile={classlist}",
           f"-XX:SharedArchiveFile={tmp}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off",
           *jvm.CDS_DUMP_OPTIONS, "-cp", jvm.class_path(jar)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"build_cds: java -Xshare:dump failed ({done.returncode}):\n{done.stdout[-2000:]}")
    # A member never maps a half-written archive: it appears under its name complete.
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="build_cds", description=__doc__.splitlines()[0])
    ap.add_argument("--jar", type=Path, default=None, help="the shaded jar (default: the one jvm.py uses)")
    ap.add_argument("--classlist", type=Path, default=None,
                    help=f"class list (default: {CLASSLIST.relative_to(jvm.REPO_ROOT)}, else "
                         "member.classlist beside the jar)")
    args = ap.parse_args(argv)
    jar = (args.jar or jvm.find_jar()).resolve()
    classlist = args.classlist or (CLASSLIST if CLASSLIST.is_file() else jar.with_name("member.classlist"))
    out = build(jar, classlist)
    print(f"build_cds: {out} ({out.stat().st_size // (1 << 20)} MiB) for {jar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
