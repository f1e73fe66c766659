"""The member's start-phase lines come from Python (Python ready, JVM started, service restored)
and from Java (launched, snapshot read, election states), each with the milliseconds since the OS
process started: both sides must read that on one clock, or the phases between a Python line and
a Java line are off (a restore of 40 ms once showed "service restored" before "snapshot read").
Real JVM, the real jar."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHILD = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from pyengine import jvm
from pyengine.node.procs import since_process_start_ms
jvm.start()
import jpype
# what StartPhases.sinceProcessStart (package-private) computes for the Java lines
ProcessHandle = jpype.JClass("java.lang.ProcessHandle")
Duration = jpype.JClass("java.time.Duration")
Instant = jpype.JClass("java.time.Instant")
start = ProcessHandle.current().info().startInstant().get()
for _ in range(5):
    before = since_process_start_ms()
    java = int(Duration.between(start, Instant.now()).toMillis())
    after = since_process_start_ms()
    print(before, java, after, flush=True)
    time.sleep(0.05)
"""


def test_python_and_java_read_the_time_since_process_start_alike(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    rows = [tuple(float(x) for x in line.split()) for line in out.splitlines()]
    assert len(rows) == 5
    for before, java, after in rows:
        assert before > 0
        # Java truncates to whole ms; the two reads around it bound it (a small slack for that)
        assert before - 2 <= java <= after + 2, (before, java, after)
