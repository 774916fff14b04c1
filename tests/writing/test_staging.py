"""staged_output: nothing half-written, an old output replaced only by a complete new one."""

from __future__ import annotations

import os

import pytest

from quantkit.writing import folder
from quantkit.writing import staging as staging_module
from quantkit.errors import OutputError
from quantkit.writing import staged_output


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_success_renames_into_place(tmp_path):
    target = tmp_path / "out"
    with staged_output(target, force=False) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.quantkit-tmp-")
        assert not target.exists()
        (staging / "f").write_text("new")
    assert (target / "f").read_text() == "new"
    assert _entries(tmp_path) == ["out"]


def test_error_removes_the_staging_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_output(tmp_path / "out", force=False) as staging:
            (staging / "f").write_text("half")
            raise RuntimeError("boom")
    assert _entries(tmp_path) == []


def test_interrupt_removes_the_staging_folder(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with staged_output(tmp_path / "out", force=False) as staging:
            (staging / "f").write_text("half")
            raise KeyboardInterrupt
    assert _entries(tmp_path) == []


def test_existing_target_refused_without_force(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="already exists; choose another output or pass --force") as info:
        with staged_output(tmp_path / "out", force=False):
            pytest.fail("must not start")
    assert info.value.exit_code == 5


def test_force_keeps_old_until_new_is_complete(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "f").write_text("old")
    with staged_output(target, force=True) as staging:
        (staging / "f").write_text("new")
        assert (target / "f").read_text() == "old"  # still there while the new one is written
    assert (target / "f").read_text() == "new"
    assert _entries(tmp_path) == ["out"]


def test_force_failure_keeps_old(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "f").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_output(target, force=True):
            raise RuntimeError("boom")
    assert (target / "f").read_text() == "old"
    assert _entries(tmp_path) == ["out"]


def test_force_replaces_a_file_target(tmp_path):
    (tmp_path / "out").write_text("a file")
    with staged_output(tmp_path / "out", force=True) as staging:
        (staging / "f").write_text("new")
    assert (tmp_path / "out" / "f").read_text() == "new"


def test_failure_between_the_renames_puts_the_old_output_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "f").write_text("old")
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # staging -> target
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(staging_module.os, "replace", flaky_replace)
    monkeypatch.setattr(staging_module, "_renameat2_function", lambda: None)  # the two-rename fallback
    with pytest.raises(KeyboardInterrupt):
        with staged_output(target, force=True) as staging:
            (staging / "f").write_text("new")
    assert (target / "f").read_text() == "old"
    assert _entries(tmp_path) == ["out"]


def test_copy_model_files_skips_weights_and_an_output_inside_the_model_folder(tmp_path):
    model = tmp_path / "model"
    (model / "old-out").mkdir(parents=True)
    (model / "old-out" / "config.json").write_text("{}")
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x")
    (model / "sub").mkdir()
    (model / "sub" / "x.txt").write_text("keep")
    (model / "sub" / "w.bin").write_bytes(b"x")
    staging = tmp_path / "staging"
    staging.mkdir()
    copied = folder.copy_model_files(model, staging, target=model / "old-out")
    assert copied == ["config.json", "sub", "tokenizer.json"]
    assert sorted(p.name for p in (staging / "sub").iterdir()) == ["x.txt"]


def test_a_resumable_run_keeps_its_partial_folder_on_failure_and_resume_gets_it_back(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with staged_output(target, force=False, resumable=True) as staging:
            assert staging == staging_module.partial_folder(target) == tmp_path / ".out.quantkit-partial"
            (staging / "shard").write_text("done")
            raise KeyboardInterrupt
    assert _entries(tmp_path) == [".out.quantkit-partial"]
    notes: list[str] = []
    with staged_output(target, force=False, notes=notes, resumable=True, resume=True) as staging:
        assert _entries(staging) == ["shard"] and (staging / "shard").read_text() == "done"
    assert notes == [] and _entries(tmp_path) == ["out"] and _entries(target) == ["shard"]


@pytest.mark.parametrize("resumable", [False, True], ids=["local-run", "resumable-run"])
def test_a_run_without_resume_removes_a_partial_folder_and_says_so(tmp_path, resumable):
    partial = staging_module.partial_folder(tmp_path / "out")
    partial.mkdir()
    (partial / "shard").write_text("old")
    notes: list[str] = []
    with staged_output(tmp_path / "out", force=False, notes=notes, resumable=resumable) as staging:
        assert _entries(staging) == []
    assert _entries(tmp_path) == ["out"] and _entries(tmp_path / "out") == []
    assert len(notes) == 1 and ".out.quantkit-partial" in notes[0]
