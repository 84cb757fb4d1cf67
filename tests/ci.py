"""What CI requires of tests: a test CI can run must not pass there by skipping."""

from __future__ import annotations

import os

import pytest


def skip_unless_ci(reason: str) -> None:
    """Skip a test this machine cannot run; under CI (CI set) that is a failure instead."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to run this test: {reason}")
    pytest.skip(reason)
