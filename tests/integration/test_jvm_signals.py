"""SIGTERM and SIGINT around the JVM start (pyengine/jvm.py): the JVM registers no handler of its
own for either. For SIGTERM: a process stopped while JPype builds its class wrappers ends
quietly (the OS default) instead of crashing in JPype's native code (bench/sigterm_at_start.py
reproduced that crash).
For SIGINT: Ctrl-C stays Python's (a ``KeyboardInterrupt``, so ``finally`` blocks and pytest's
teardowns run); the member's and worker's own handler (ShutdownLatch) still works afterwards for
both. Real processes, the real jar."""

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
    import time
    try:
        print("ready", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        raise SystemExit(7)
"""


def _run_and_term(tmp_path: Path, mode: str, sig: int = signal.SIGTERM) -> tuple[int, str]:
    # SIGINT as an interactive shell leaves it to a program it starts (a background child of a
    # non-interactive shell would inherit it ignored)
    p = subprocess.Popen([sys.executable, "-c", CHILD, mode], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, restore_signals=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = p.stdout.readline().decode()
        assert first.strip() == "ready", first
        p.send_signal(sig)
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


def test_ctrl_c_after_the_jvm_start_is_a_keyboard_interrupt(tmp_path):
    # with the JVM's own handler the process ended at once with 130, no KeyboardInterrupt
    rc, out = _run_and_term(tmp_path, "plain", signal.SIGINT)
    assert rc == 7 and "KeyboardInterrupt" in out, (rc, out)


def test_the_members_own_handler_still_takes_ctrl_c(tmp_path):
    rc, out = _run_and_term(tmp_path, "latch", signal.SIGINT)
    assert rc == 0 and "stopped by SIGINT" in out, (rc, out)


PROGRAM_HANDLER = f"""
import signal, sys, time
sys.path.insert(0, {str(ROOT)!r})
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))  # set before the JVM, as the pusher does
from pyengine import jvm
jvm.start()
print("ready", flush=True)
deadline = time.monotonic() + 60
while not stopped and time.monotonic() < deadline:
    time.sleep(0.05)
print("stopped by the program's own handler" if stopped else "never stopped", flush=True)
"""


def test_a_sigterm_handler_set_before_the_jvm_start_still_runs(tmp_path):
    # before, the JVM installed its own over it: exit 143 and the program's stop never ran
    p = subprocess.Popen([sys.executable, "-c", PROGRAM_HANDLER], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        assert p.stdout.readline().decode().strip() == "ready"
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=60)[0].decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert p.returncode == 0 and "stopped by the program's own handler" in out, (p.returncode, out)
