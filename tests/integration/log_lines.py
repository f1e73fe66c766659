"""What a member's or worker's log must look like: every Java line stamped with the time."""

from __future__ import annotations

import re

STAMPED_JAVA = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[matchx (member|worker)")


def assert_java_lines_stamped(log: str) -> None:
    """The Java side's lines (``[matchx member ...]``, ``[matchx worker ...]``) start with the
    wall-clock time as the Python lines do, so one process's lines and several logs line up."""
    lines = log.splitlines()
    bare = [line for line in lines if line.startswith("[matchx ")]
    assert not bare, f"{len(bare)} Java lines without a time, e.g. {bare[:3]}"
    assert any(STAMPED_JAVA.match(line) for line in lines), "no Java line in the log"
