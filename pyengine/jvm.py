"""Starting the JVM inside this Python process (JPype), once.

The shaded jar from ``java-cluster/`` must be on the class path. It is looked up in this order:
``$MATCHX_JAR``, ``java-cluster/target/matchx-cluster.jar`` beside the source tree, then
``/opt/matchx/lib/matchx-cluster.jar`` (the container image).

Class data sharing: when ``matchx-member.jsa`` sits beside the jar and is newer than it (``make
build`` writes it: ``pyengine/ops/build_cds.py``), the JVM maps the classes a member loads from
it instead of loading and verifying each one. ``MATCHX_CDS=0`` turns it off.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

JAR_NAME = "matchx-cluster.jar"
REPO_ROOT = Path(__file__).resolve().parent.parent

# One-token form: JPype passes options verbatim, Aeron 1.47+ needs both opens.
JVM_OPTIONS = (
    "--add-opens=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-opens=java.base/java.util.zip=ALL-UNNAMED",
    "-XX:+UseSerialGC",
    "-Xss2m",
    "-Daeron.print.configuration=false",
)

# the archive of the member's classes, beside the jar (pyengine/ops/build_cds.py)
CDS_ARCHIVE = "matchx-member.jsa"
# options the archive is dumped with: the runtime's own (an archive is checked against them)
CDS_DUMP_OPTIONS = JVM_OPTIONS

_lock = threading.Lock()


def support_jar() -> Path:
    """JPype's own jar, which ``jpype.startJVM`` appends to the class path."""
    import jpype

    return Path(jpype.__file__).resolve().parent.parent / "org.jpype.jar"


def class_path(jar: Path) -> str:
    """The class path the JVM runs with: the jar, then JPype's jar (what startJVM builds)."""
    return f"{jar}{os.pathsep}{support_jar()}"


def cds_archive(jar: Path) -> Path:
    return jar.with_name(CDS_ARCHIVE)


def cds_options(jar: Path) -> tuple[str, ...]:
    """``-XX:SharedArchiveFile`` for the archive beside ``jar`` when there is one made after the
    jar (one from before a rebuild would only be refused by the JVM); none otherwise. The JVM
    checks the archive itself (JDK build, class path) and starts without it when it does not
    fit (``-Xshare:auto``)."""
    if os.environ.get("MATCHX_CDS") == "0":
        return ()
    jsa = cds_archive(jar)
    try:
        if jsa.stat().st_mtime < jar.stat().st_mtime:
            return ()
    except OSError:
        return ()
    return (f"-XX:SharedArchiveFile={jsa}", "-Xshare:auto")


class JvmSetupError(RuntimeError):
    """The JVM or the project jar is missing; the message says what to run."""


def find_jar() -> Path:
    explicit = os.environ.get("MATCHX_JAR")
    if explicit:
        # A jar named explicitly must be there: falling back to another one would hide the error.
        if Path(explicit).is_file():
            return Path(explicit)
        raise JvmSetupError(
            f"matchx: MATCHX_JAR={explicit} does not exist; build the jar with `make build` "
            "(mvn -q package) or unset MATCHX_JAR"
        )
    candidates = []
    candidates.append(REPO_ROOT / "java-cluster" / "target" / JAR_NAME)
    candidates.append(Path("/opt/matchx/lib") / JAR_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise JvmSetupError(
        f"matchx: the cluster jar {JAR_NAME} was not found (looked in "
        f"{', '.join(str(c) for c in candidates)}); build it with `make build` (mvn -q package)"
    )


def check_java() -> None:
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    raise JvmSetupError(
        "matchx: no Java runtime found (no JAVA_HOME, no `java` on PATH); install a JDK 17, "
        "e.g. `apt-get install -y openjdk-17-jdk-headless`, or run `make setup`"
    )


def start(extra_options: tuple[str, ...] = ()) -> None:
    """Start the JVM with the project jar, unless this process already runs one."""
    import jpype

    with _lock:
        if jpype.isJVMStarted():
            return
        check_java()
        jar = find_jar()
        try:
            jvm_path = jpype.getDefaultJVMPath()
        except jpype.JVMNotFoundException as exc:
            raise JvmSetupError(
                f"matchx: JPype cannot find libjvm ({exc}); set JAVA_HOME to a JDK 17"
            ) from exc
        # convertStrings=False keeps Java strings Java-side: no implicit copies on the hot path.
        with _no_java_signal_handlers() as guard:
            # startJVM creates the JVM (which decides then whether to handle SIGTERM), then
            # builds JPype's class wrappers (initializeResources, JPype 1.7): SIGTERM is back to
            # the OS default before the wrappers, so only the JVM's creation itself ignores it
            core = getattr(jpype, "_core", None)
            resources = getattr(core, "initializeResources", None)
            if guard.active and callable(resources):
                def resources_after_restoring() -> None:
                    guard.restore()
                    resources()

                core.initializeResources = resources_after_restoring
            try:
                jpype.startJVM(
                    jvm_path, *JVM_OPTIONS, *cds_options(jar), *extra_options, classpath=[str(jar)],
                    convertStrings=False,
                )
            finally:
                if callable(resources):
                    core.initializeResources = resources


class _no_java_signal_handlers:
    """SIGTERM and SIGINT ignored while the JVM starts, then their handlers as before.

    The JVM registers its own SIGTERM handler (shut the JVM down, exit 143) only when SIGTERM is
    not ignored at its start (the rule that keeps ``nohup`` working). That handler is what
    crashed processes stopped while JPype was still building its class wrappers: the shutdown
    ran under JPype's native code (SIGSEGV at ``_jpype.so``, ``TypeFactoryNative.newWrapper``;
    bench/sigterm_at_start.py). Without it a SIGTERM after the start ends the process the OS
    way (exit -15) until a member or worker installs its own handler (``ShutdownLatch``, which
    still can). The price: a SIGTERM that arrives while the JVM itself is being created is lost
    (whoever stops a member escalates to SIGKILL: ``LocalCluster.stop_member`` after 15 s). Only
    the main thread can change a signal's handling. A handler the program set itself comes back
    too: before, the JVM replaced it (the pusher's graceful stop on SIGTERM never ran).

    SIGINT (Ctrl-C) the same way, whatever Python's handler for it: with the JVM's handler a
    Ctrl-C ended the process at once (exit 130) without a ``KeyboardInterrupt``, so neither an SDK
    user's ``finally`` blocks nor pytest's fixture teardowns ran (an interrupted ``make test`` left
    its systems' workers running). Python's handler comes back, so Ctrl-C is Python's again; a
    member or worker then hands it to ``ShutdownLatch`` as before."""

    def __enter__(self) -> _no_java_signal_handlers:
        self.saved: object = None
        self.saved_int: object = None
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, None):
                self.saved = signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None):
                self.saved_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self

    @property
    def active(self) -> bool:
        return self.saved is not None or self.saved_int is not None

    def restore(self) -> None:
        if self.saved is not None:
            signal.signal(signal.SIGTERM, self.saved)  # type: ignore[arg-type]
            self.saved = None
        if self.saved_int is not None:
            signal.signal(signal.SIGINT, self.saved_int)  # type: ignore[arg-type]
            self.saved_int = None

    def __exit__(self, *exc: object) -> None:
        self.restore()


# Round-trip stage stamps for bench/rtt_breakdown.py (issue #20): on only when MATCHX_TRACE_DIR
# names a directory (Java's io.matchx.cluster.LatencyTrace reads the same variable). Python marks
# through Java so every stamp of a process goes to one file on one clock (System.nanoTime, i.e.
# CLOCK_MONOTONIC, which time.perf_counter_ns reads too); a mark costs one Python->Java call
# (~1-2 us), and when tracing is off callers test TRACE and do nothing.
TRACE = bool(os.environ.get("MATCHX_TRACE_DIR"))
_trace_mark = None


def trace(stage: int) -> None:
    """Stamps ``stage`` (a LatencyTrace stage number) now; call only when ``TRACE``."""
    global _trace_mark
    if _trace_mark is None:
        import jpype

        _trace_mark = jpype.JClass("io.matchx.cluster.LatencyTrace").mark
    _trace_mark(stage)


def stamp_java_log_lines() -> None:
    """From here on every line the JVM writes to stderr starts with the time, like the Python
    log lines beside it (members and workers; not the SDK, whose stderr is the user's)."""
    import jpype

    jpype.JClass("io.matchx.cluster.TimestampedLines").stampStandardError()
