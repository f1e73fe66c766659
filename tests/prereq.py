"""What a test does when something it needs is not there (Docker, the compiled engine, a kernel
setting): outside ``make test`` it skips, saying what is missing; under ``make test`` (which sets
MATCHX_REQUIRE_ALL=1) or in CI (CI=true) it fails with one line naming what is missing, so a run
that could not test something never passes as "skipped"."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def required() -> bool:
    return os.environ.get("MATCHX_REQUIRE_ALL") == "1" or os.environ.get("CI") == "true"


def missing(what: str) -> NoReturn:
    """Skip, or fail under MATCHX_REQUIRE_ALL=1 / CI=true, because ``what`` is missing."""
    if required():
        pytest.fail(f"missing prerequisite (MATCHX_REQUIRE_ALL): {what}", pytrace=False)
    pytest.skip(f"missing prerequisite: {what}")
