"""restart_self (pyengine/node/procs.py): what a member or worker does when Aeron leaves it in a
wait it cannot leave (java-cluster JoinDeadlock.java). A real process restarts itself."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from pyengine.node.procs import restart_self
    state = Path(sys.argv[2])
    if not state.exists():
        fd = os.open(sys.argv[3], os.O_RDONLY)  # inheritable: would survive a plain exec
        os.set_inheritable(fd, True)
        state.write_text(json.dumps({"pid": os.getpid(), "fd": fd, "argv": sys.argv[1:]}))
        print("first run", flush=True)
        restart_self("test")
        raise SystemExit("restart_self returned")
    first = json.loads(state.read_text())
    try:
        os.fstat(first["fd"])
        fd_open = True
    except OSError:
        fd_open = False
    print(json.dumps({"pid": os.getpid(), "first": first, "argv": sys.argv[1:], "fd_open": fd_open}), flush=True)
""")


def test_a_process_restarts_itself_with_its_command_line_and_no_inherited_descriptors(tmp_path):
    script = tmp_path / "restarter.py"
    script.write_text(SCRIPT)
    state = tmp_path / "state.json"
    proc = subprocess.run([sys.executable, str(script), str(REPO), str(state), str(script)],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "first run", proc.stdout
    second = json.loads(lines[1])
    assert second["pid"] == second["first"]["pid"]  # the same process, run again
    assert second["argv"] == second["first"]["argv"]  # from its own command line
    assert not second["fd_open"], second  # the descriptor the first run opened is gone
    assert "restarting this process: test" in proc.stderr
