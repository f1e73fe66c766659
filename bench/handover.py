"""Planned leader handover under load: SIGTERM to the leader (what `matchctl member restart` and
`matchctl cluster handover` do) -> first answer to an order sent after it, while a client sends
the order flow at a steady rate.

    .venv/bin/python bench/handover.py                      # 20 handovers at 1,000 orders/s
    .venv/bin/python bench/handover.py --trials 5 --rate 500

The run, the client and the checks are bench/failover_under_load.py's (every order answered,
none applied twice: a resend is answered from the reply cache; all members end on one state
hash), with one difference: the leader is stopped with SIGTERM instead of SIGKILL, and restarted
once its process has exited. A stopping leader ends its log before anything else
(java-cluster Handover.java), so its followers elect at once instead of waiting for the
heartbeat timeout. Writes bench/reports/handover.md beside the crash figures.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import failover_under_load as crash  # noqa: E402

REPORT = Path(__file__).resolve().parent / "reports" / "handover.md"
CRASH_TITLE = "# Failover under load: leader SIGKILL -> first answer to an order sent after the kill"
TITLE = "# Planned leader handover under load: leader SIGTERM -> first answer to an order sent after it"


class Terminating:
    """The bench cluster, with a leader 'kill' that is a SIGTERM (a planned stop) and a restart
    that first waits for the stopped process to exit."""

    def __init__(self, cluster) -> None:
        self._cluster = cluster

    def __getattr__(self, name: str):
        return getattr(self._cluster, name)

    def kill(self, member_id: int, sig: int = signal.SIGTERM) -> None:
        self._cluster.kill(member_id, signal.SIGTERM if sig == signal.SIGKILL else sig)

    def start_member(self, member_id: int, detach: bool = False) -> int:
        self._cluster.stop_member(member_id, timeout=60)  # reaps the stopping process (SIGKILL after 60 s)
        return self._cluster.start_member(member_id, detach=detach)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return crash.main(argv)
    if not any(a.startswith("--trials") for a in argv):
        argv += ["--trials", "20"]
    if not any(a.startswith("--report") for a in argv):
        argv += ["--report", str(REPORT)]
    if any(a.startswith("--schedule") for a in argv):
        raise SystemExit("handover.py runs settled trials only")
    settled = crash.settled_trials
    crash.settled_trials = lambda cluster, *rest: settled(Terminating(cluster), *rest)
    code = crash.main(argv)
    report = Path(argv[argv.index("--report") + 1]) if "--report" in argv else REPORT
    if report.is_file():
        text = report.read_text().replace(CRASH_TITLE, TITLE + "\n\n" + (
            "Each trial stops the leader with SIGTERM (a planned stop: it ends its log first, "
            "Handover.java) instead of killing it; 'killed', 'the kill' and 'failover' below mean that "
            "SIGTERM and the pause it caused. The stopped member is restarted once its process has exited."), 1)
        text = text.replace("python bench/failover_under_load.py", "python bench/handover.py", 1)
        report.write_text(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
