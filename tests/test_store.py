"""The results layout's files: locks that cannot be turned against another file."""

from __future__ import annotations

import os

import pytest

from ablation import store


@pytest.mark.parametrize("name", [store.LAUNCH_LOCK, store.CELL_LOCK])
def test_a_symlinked_lock_is_refused_and_its_target_kept(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / name).symlink_to(victim)
    with pytest.raises(ValueError, match="symbolic link") as err, store.locked(folder / name):
        pass
    assert victim.read_text() == "precious\n"
    assert "\n" not in str(err.value) and str(folder / name) in str(err.value)


def test_a_lock_that_is_not_a_lone_regular_file_is_refused(tmp_path):
    fifo, other = tmp_path / "fifo.lock", tmp_path / "other.txt"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"), store.locked(fifo):
        pass
    other.write_text("precious\n")
    os.link(other, tmp_path / "linked.lock")
    with pytest.raises(ValueError, match="hard links"), store.locked(tmp_path / "linked.lock"):
        pass
    assert other.read_text() == "precious\n"


def test_a_lock_records_its_holder_and_is_created_when_missing(tmp_path):
    path = tmp_path / "sub" / store.CELL_LOCK
    with store.locked(path):
        assert path.read_text() == f"host {os.uname().nodename} pid {os.getpid()}\n"
    with store.locked(path):  # an existing lock file is reused
        assert path.read_text().startswith("host ")
