"""staged_output under races and interrupts: the target is taken by one run at a time, never
replaced without --force, always holds one complete output, and leftovers are cleaned."""

from __future__ import annotations

import os
import signal

import pytest

from quantkit.errors import OutputError
from quantkit.writing import staged_output
from quantkit.writing import staging as staging_module


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_second_run_on_the_same_target_is_refused(tmp_path):
    target = tmp_path / "out"
    with staged_output(target, force=False) as first:
        (first / "f").write_text("first")
        with pytest.raises(OutputError, match=rf"{target}: another quantkit \(pid {os.getpid()}\) is writing this output now") as info:
            with staged_output(target, force=True):
                pytest.fail("must not start")
        assert info.value.exit_code == 5
    assert (target / "f").read_text() == "first"
    assert _entries(tmp_path) == ["out"]  # lock file gone too


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_a_folder_appearing_meanwhile_is_not_replaced(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(staging_module, "_renameat2_function", lambda: None)
    target = tmp_path / "out"
    with pytest.raises(OutputError, match=rf"{target}: appeared while quantkit was writing; not replaced") as info:
        with staged_output(target, force=False) as staging:
            (staging / "f").write_text("new")
            target.mkdir()  # empty: a plain rename would silently replace it
    assert info.value.exit_code == 5
    assert _entries(tmp_path) == ["out"] and _entries(target) == []


def test_with_force_a_folder_appearing_meanwhile_is_swapped_out(tmp_path):
    target = tmp_path / "out"
    with staged_output(target, force=True) as staging:
        (staging / "f").write_text("new")
        target.mkdir()
        (target / "g").write_text("someone else's")
    assert _entries(target) == ["f"] and _entries(tmp_path) == ["out"]


def test_exchange_keeps_the_target_complete_at_every_step(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "f").write_text("old")
    seen = []
    real_remove = staging_module._remove

    def remove(path):  # called with the old output, once the new one is in place
        seen.append(((target / "f").read_text(), (path / "f").read_text()))
        real_remove(path)

    monkeypatch.setattr(staging_module, "_remove", remove)
    with staged_output(target, force=True) as staging:
        (staging / "f").write_text("new")
    assert seen == [("new", "old")]
    assert _entries(tmp_path) == ["out"]


def test_an_interrupt_during_the_swap_waits_and_says_the_output_is_in_place(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "f").write_text("old")
    real_exchange = staging_module._exchange

    def exchange(staging, target_):
        os.kill(os.getpid(), signal.SIGINT)  # arrives mid-swap: held until the swap is done
        return real_exchange(staging, target_)

    monkeypatch.setattr(staging_module, "_exchange", exchange)
    with pytest.raises(KeyboardInterrupt, match=f"the output was already complete and is in place: {target}"):
        with staged_output(target, force=True) as staging:
            (staging / "f").write_text("new")
    assert (target / "f").read_text() == "new"
    assert _entries(tmp_path) == ["out"]


def test_leftovers_of_a_dead_run_are_cleaned_and_reported(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "f").write_text("current")
    (tmp_path / ".out.quantkit-tmp-deadbeef").mkdir()
    (tmp_path / ".out.quantkit-tmp-deadbeef" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".out.quantkit-lock").write_text("999999\n")  # its holder died: no flock on it
    notes: list[str] = []
    with staged_output(target, force=True, notes=notes) as staging:
        (staging / "f").write_text("new")
    assert notes == [f"an interrupted quantkit run had left {target} unfinished: removed 1 leftover folder(s) beside it (.out.quantkit-tmp-deadbeef)"]
    assert _entries(tmp_path) == ["out"] and (target / "f").read_text() == "new"


def test_an_old_output_moved_aside_by_a_dead_run_is_put_back(tmp_path):
    target = tmp_path / "out"
    old = tmp_path / ".out.quantkit-old-12345678"  # killed between the two renames of the fallback swap
    old.mkdir()
    (old / "f").write_text("old")
    (tmp_path / ".out.quantkit-tmp-87654321").mkdir()
    notes: list[str] = []
    with pytest.raises(OutputError, match="already exists"):  # it is back: without --force, kept
        with staged_output(target, force=False, notes=notes):
            pytest.fail("must not start")
    assert (target / "f").read_text() == "old"
    assert _entries(tmp_path) == ["out"]
    assert notes == [f"an interrupted quantkit run had left {target} unfinished: put the previous output back at {target}; "
                     "removed 1 leftover folder(s) beside it (.out.quantkit-tmp-87654321)"]


def test_a_lock_file_that_is_a_link_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / ".out.quantkit-lock").symlink_to(victim)
    with pytest.raises(OutputError, match="cannot create the lock for out") as info:
        with staged_output(tmp_path / "out", force=False):
            pytest.fail("must not start")
    assert info.value.exit_code == 5 and victim.read_text() == "keep"
