"""Issue 11, items 6, 9 and 12: output paths that would destroy the input or cannot be written
are refused before anything is read, in one line; hostile extras of a model folder are never
copied and each is listed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bad_files import BAD_OUTPUTS, HOSTILE_EXTRAS, _hf_model, build  # noqa: F401
from quantkit.layout import MANIFEST


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder`` (links as their target, not followed)."""
    found: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                found[rel] = path.read_bytes()
            else:
                found[rel] = "dir"
    return found


@pytest.fixture
def no_reading(monkeypatch):
    """Fail the test if a command opens its input."""
    import quantkit_cli.convert_cmd as convert_cmd
    import quantkit_cli.main as main

    def refuse(*args, **kwargs):
        raise AssertionError("the input was opened before the output was checked")

    monkeypatch.setattr(convert_cmd, "open_checkpoint", refuse)
    monkeypatch.setattr(main, "open_checkpoint", refuse)


CASES = [(bad, command) for bad in BAD_OUTPUTS for command in bad.commands]


@pytest.mark.parametrize(("bad", "command"), CASES, ids=[f"{b.id}-{c}" for b, c in CASES])
def test_bad_output_refused_before_reading(cli, tmp_path, no_reading, bad, command):
    folder = tmp_path / "work"
    folder.mkdir()
    src, out, extra = bad.build(folder)
    before = _snapshot(tmp_path)
    args = ["convert", src, "--to", "bf16"] if command == "convert" else ["reshard", src]
    result = cli(*args, "-o", out, *extra)
    assert result.exit_code == bad.exit_code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantkit: error: "), result.stderr
    named = bad.names(folder) if bad.names else out
    assert lines[0].startswith(f"quantkit: error: {named}: {bad.fragment}") or (
        f"{named}: " in lines[0] and bad.fragment in lines[0]
    ), lines[0]
    assert result.stdout == ""
    assert _snapshot(tmp_path) == before  # nothing written, nothing removed


def test_python_api_refuses_too(tmp_path):
    from quantkit import convert, reshard
    from quantkit.convert import ConvertOptions
    from quantkit.errors import UsageError

    model = _hf_model(tmp_path)
    with pytest.raises(UsageError, match="the output lies inside the input folder") as info:
        reshard(model, model / "out")
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="the output is the input"):
        convert(model, model, options=ConvertOptions("bf16"), force=True)
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("hostile", HOSTILE_EXTRAS, ids=[h.id for h in HOSTILE_EXTRAS])
@pytest.mark.parametrize("command", ["convert", "reshard"])
def test_hostile_extras_are_listed_not_copied(cli, tmp_path, hostile, command):
    model = _hf_model(tmp_path)
    (model / "tokenizer.json").write_text('{"version": "1.0"}\n')
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile.build(model, outside)
    out = tmp_path / "out"
    args = ["convert", model, "--to", "bf16"] if command == "convert" else ["reshard", model]
    result = cli(*args, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    note = f"note: not copied from the model folder: {hostile.name} ({hostile.why})"
    assert note in (result.stdout + result.stderr).splitlines()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["skipped_files"] == {hostile.name: hostile.why}
    assert not os.path.lexists(out / hostile.name)
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}\n'  # the ordinary files still come
    assert all(not p.is_symlink() for p in out.rglob("*"))
    for path in out.rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes() and b"PRIVATE KEY" not in path.read_bytes()
    assert cli("verify", out).exit_code == 0


def test_copy_total_cap(tmp_path, monkeypatch):
    from quantkit.writing import folder as folder_module

    monkeypatch.setattr(folder_module, "MAX_COPIED_TOTAL_BYTES", 10)
    model = tmp_path / "m"
    model.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (model / name).write_text("12345\n")  # 6 bytes each: a fits, b does not
    staging = tmp_path / "s"
    staging.mkdir()
    skipped: dict[str, str] = {}
    assert folder_module.copy_model_files(model, staging, skipped=skipped) == ["a.txt"]
    assert sorted(skipped) == ["b.txt", "c.txt"]
    assert all(why.startswith("past the ") and why.endswith("files quantkit copies from a model folder") for why in skipped.values())
