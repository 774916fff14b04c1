"""Issue 6: every failure is one line on stderr naming the file, a documented exit code,
no traceback unless --debug, and nothing written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bad_files import BAD_INPUTS, build, marker_of
from quantkit.writing import shard as writer_module
from quantkit.loading import load_state_dict


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".quantkit-" in p.name)


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("quantkit: error: ")
    assert "Traceback" not in stderr
    return lines[0]


COMMANDS = {
    "reshard": lambda path, out: ["reshard", path, "-o", out],
    "convert": lambda path, out: ["convert", path, "--to", "bf16", "-o", out],
    "inspect": lambda path, out: ["inspect", path],
}


CASES = [pytest.param(bad, command, id=f"{bad.id}-{command}") for bad in BAD_INPUTS for command in COMMANDS]


@pytest.mark.parametrize(("bad", "command"), CASES)
def test_bad_input_gives_one_line_and_its_exit_code(cli, tmp_path, bad, command):
    path, named = build(bad, tmp_path / "in")
    out = tmp_path / "out"
    args = COMMANDS[command](path, out)
    result = cli(*args)
    assert result.exit_code == bad.exit_code
    line = _one_error_line(result.stderr)
    assert bad.fragment in line
    assert str(named) in line
    assert result.stdout == ""
    assert not out.exists() and _leftovers(tmp_path) == []
    assert not marker_of(tmp_path / "in").exists(), "the pickle's code ran"


def test_debug_shows_the_traceback(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    result = cli("--debug", "inspect", tmp_path / "notes.txt")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().endswith("not a checkpoint quantkit can read (neither safetensors nor a PyTorch zip or legacy pickle)")


def test_debug_lasts_one_invocation(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    assert "Traceback" in cli("--debug", "inspect", tmp_path / "notes.txt").stderr
    result = cli("inspect", tmp_path / "notes.txt")  # the same process: nothing kept from the run before
    assert result.exit_code == 3
    assert "Traceback" not in _one_error_line(result.stderr)


def test_debug_shows_the_traceback_of_an_internal_error(cli, small_pth, tmp_path, monkeypatch):
    import importlib

    def boom(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(importlib.import_module("quantkit.reshard"), "plan_shards", boom)
    result = cli("--debug", "reshard", small_pth, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and 'raise ZeroDivisionError("a bug")' in result.stderr
    assert result.stderr.rstrip().endswith("ZeroDivisionError: a bug (run with --debug for the traceback)")


def test_output_parent_is_a_file(cli, small_pth, tmp_path):
    (tmp_path / "afile").write_text("x")
    result = cli("reshard", small_pth, "-o", tmp_path / "afile" / "out")
    assert result.exit_code == 5
    assert _one_error_line(result.stderr) == f"quantkit: error: {tmp_path / 'afile'}: cannot create out there: {tmp_path / 'afile'} is not a folder"


def test_output_parent_missing(cli, small_pth, tmp_path):
    result = cli("reshard", small_pth, "-o", tmp_path / "no" / "such" / "out")
    assert result.exit_code == 5
    assert "does not exist" in _one_error_line(result.stderr)


def test_unwritable_output_location(cli, small_pth, tmp_path, monkeypatch):
    # tests may run as root, for whom chmod does not deny writes: refuse the mkdir instead
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    result = cli("reshard", small_pth, "-o", tmp_path / "out")
    assert result.exit_code == 5
    assert _one_error_line(result.stderr) == f"quantkit: error: {tmp_path}: cannot write here: Permission denied"
    assert not (tmp_path / "out").exists()


def _fill_disk_after(monkeypatch, budget: int) -> None:
    """Writes of shard data fail with ENOSPC once ``budget`` bytes went through (all files together)."""
    real_pwrite = os.pwrite
    left = [budget]

    def pwrite(fd, data, offset):
        left[0] -= len(data)
        if left[0] < 0:
            raise OSError(errno.ENOSPC)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(writer_module.os, "pwrite", pwrite)


@pytest.mark.parametrize("budget", [0, 300])
def test_full_disk_leaves_nothing(cli, make_checkpoint, tmp_path, monkeypatch, budget):
    ckpt = make_checkpoint("pth-zip")
    _fill_disk_after(monkeypatch, budget)
    out = tmp_path / "out"
    result = cli("reshard", ckpt.path, "-o", out, "--max-size", "100B", "-q")
    assert result.exit_code == 5
    line = _one_error_line(result.stderr)
    assert "write failed: No space left on device" in line
    assert ".safetensors" in line
    assert not out.exists() and _leftovers(tmp_path) == []


def test_failed_forced_run_keeps_the_old_output(cli, make_checkpoint, tmp_path, monkeypatch):
    old, new = make_checkpoint("pth-zip", seed=1), make_checkpoint("pth-zip", seed=2)
    out = tmp_path / "out"
    assert cli("reshard", old.path, "-o", out, "-q").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _fill_disk_after(monkeypatch, 200)
    result = cli("reshard", new.path, "-o", out, "--force", "-q")
    assert result.exit_code == 5
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    load = load_state_dict(out)
    assert all(load[k].equal(v) for k, v in old.expected.items() if v.dtype.itemsize > 1)


def test_failed_forced_run_on_bad_input_keeps_the_old_output(cli, small_pth, tmp_path):
    out = tmp_path / "out"
    assert cli("reshard", small_pth, "-o", out, "-q").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "bad.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{broken!")
    result = cli("reshard", tmp_path / "bad.safetensors", "-o", out, "--force")
    assert result.exit_code == 3
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_internal_errors_are_one_line_too(cli, small_pth, tmp_path, monkeypatch):
    import importlib

    reshard_module = importlib.import_module("quantkit.reshard")  # the package re-exports a function of that name

    def boom(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(reshard_module, "plan_shards", boom)
    result = cli("reshard", small_pth, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert _one_error_line(result.stderr.replace("quantkit: internal error", "quantkit: error")).endswith(
        "ZeroDivisionError: a bug (run with --debug for the traceback)"
    )
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
