"""How `crucible up` paces restarts of an API that keeps failing (RestartPolicy), and which
folders it keeps private (private_dir); the real thing, on a live stack, is in
tests/e2e/test_up_hardening.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.stack import RestartPolicy, UnsafeDir, private_dir


def test_failures_in_a_row_wait_longer_then_keep_trying_at_the_longest_wait() -> None:
    policy = RestartPolicy()
    waits = [policy.failed() for _ in range(policy.budget + 3)]
    # A lone crash is restarted at once; then the waits grow; once the budget is spent, the
    # API is still started again, every after_budget_s, for ever: `up` never gives up.
    assert waits[: policy.budget] == list(policy.backoff_s)
    assert waits[0] == 0
    assert waits[: policy.budget] == sorted(waits[: policy.budget])
    assert waits[policy.budget :] == [policy.after_budget_s] * 3
    assert policy.after_budget_s >= max(policy.backoff_s)


def test_an_api_that_stays_up_starts_the_count_again() -> None:
    policy = RestartPolicy()
    for _ in range(3):
        policy.failed()
    assert not policy.up_for(policy.stable_after_s - 1)  # up, but not long enough yet
    assert policy.failed() == policy.backoff_s[3]
    assert policy.up_for(policy.stable_after_s)
    assert not policy.up_for(policy.stable_after_s + 1)  # already stable: said once
    assert policy.failed() == 0  # its next exit is a first one again


def test_a_private_dir_is_made_or_closed_to_0700(tmp_path: Path) -> None:
    made = tmp_path / "a" / "b"
    private_dir(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    old = tmp_path / "old"
    old.mkdir()
    old.chmod(0o755)  # as an earlier `up` left its data dir
    private_dir(old)
    assert stat.S_IMODE(old.stat().st_mode) == 0o700


def test_a_symlink_where_the_ray_folder_goes_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    planted = tmp_path / "crucible-ray-6380"
    planted.symlink_to(elsewhere)
    with pytest.raises(UnsafeDir, match="not a folder owned by this user"):
        private_dir(planted)
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755  # left as it was
    # A data dir may be a link to a bigger disk: there the target is what counts.
    private_dir(planted, follow_symlinks=True)
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_another_users_folder_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UnsafeDir):
        private_dir(theirs)
