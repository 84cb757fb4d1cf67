"""Spill directories: temp work moves to another filesystem when its own disk is full."""

from __future__ import annotations

import errno

import pytest

from core.errors import NoSpace
from core.scratch import run_spilling, spill_dirs
from tests.ci import skip_unless_ci


def test_work_is_redone_in_a_spill_dir_when_the_primary_is_full(tmp_path):
    if not spill_dirs(tmp_path):
        skip_unless_ci("no other writable filesystem for temp files here")
    tried = []

    def work(base):
        tried.append(base)
        if base == tmp_path:
            raise OSError(errno.ENOSPC, "No space left on device")
        return "done"

    assert run_spilling(tmp_path, work) == "done"
    assert tried[0] == tmp_path and tried[1] != tmp_path


def test_other_errors_are_not_retried(tmp_path):
    tried = []

    def work(base):
        tried.append(base)
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(OSError):
        run_spilling(tmp_path, work)
    assert tried == [tmp_path]


def test_no_space_everywhere_raises_the_last_error(tmp_path):
    def work(base):
        raise NoSpace(f"{base} full")

    with pytest.raises(NoSpace):
        run_spilling(tmp_path, work)
