"""SIGTERM around the JVM start (pyengine/jvm.py): the JVM registers no SIGTERM handler of its
own, so a process stopped while JPype builds its class wrappers ends quietly (the OS default)
instead of crashing in JPype's native code (bench/sigterm_at_start.py reproduced that crash);
the member's and worker's own handler (ShutdownLatch) still works afterwards. Real processes,
the real jar."""

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHILD = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pyengine import jvm
jvm.start()
import jpype
if sys.argv[1] == "latch":
    latch = jpype.JClass("io.matchx.cluster.ShutdownLatch")()
    print("ready", flush=True)
    print("stopped by SIG" + str(latch.await_()), flush=True)
else:
    jpype.JClass("io.aeron.cluster.ConsensusModule")
    print("ready", flush=True)
    import time
    time.sleep(60)
"""


def _run_and_term(tmp_path: Path, mode: str) -> tuple[int, str]:
    p = subprocess.Popen([sys.executable, "-c", CHILD, mode], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        first = p.stdout.readline().decode()
        assert first.strip() == "ready", first
        p.send_signal(signal.SIGTERM)
        rest = p.communicate(timeout=60)[0].decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    return p.returncode, rest


def test_sigterm_after_the_jvm_start_ends_the_process_the_os_way(tmp_path):
    rc, out = _run_and_term(tmp_path, "plain")
    assert rc == -signal.SIGTERM, (rc, out)
    assert not list(tmp_path.glob("hs_err_pid*.log"))


def test_the_members_own_sigterm_handler_still_works(tmp_path):
    rc, out = _run_and_term(tmp_path, "latch")
    assert rc == 0 and "stopped by SIGTERM" in out, (rc, out)
    assert not list(tmp_path.glob("hs_err_pid*.log"))
