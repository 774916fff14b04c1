"""Issue 11, items 7 and 8, on real ``python -m quantkit`` processes: two runs on one output,
a folder created at the output mid-run, and SIGKILL during the ``--force`` swap.

To make "mid-run" and "during the swap" certain rather than a race, the runs go through a
wrapper that patches quantkit before running the module (as test_interrupts does): tensor
writes are slowed down and, while a file named by ``QK_TEST_GATE`` exists, held (so a run is
still writing however loaded the machine is), and, where a test asks through ``QK_TEST_PAUSE``,
the swap writes a marker file and sleeps just before or just after its exchange. Nothing in
quantkit reads these variables.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
WRAPPER = """
import os, runpy, sys, time
from quantkit.writing import shard, staging
delay, gate = float(os.environ.get("QK_TEST_WRITE_DELAY", "0")), os.environ.get("QK_TEST_GATE")
if delay or gate:
    for method in ("write", "wrote_piece"):
        real = getattr(shard.ShardWriter, method)
        def slow(self, *args, _real=real):
            time.sleep(delay)
            held_until = time.monotonic() + 120
            while gate and os.path.exists(gate) and time.monotonic() < held_until:
                time.sleep(0.01)
            return _real(self, *args)
        setattr(shard.ShardWriter, method, slow)
pause, marker = os.environ.get("QK_TEST_PAUSE"), os.environ.get("QK_TEST_MARKER")
if pause:
    real_exchange = staging._exchange
    def exchange(src, dst):
        if pause == "before-swap":
            open(marker, "w").close(); time.sleep(60)
        done = real_exchange(src, dst)
        if pause == "after-swap":
            open(marker, "w").close(); time.sleep(60)
        return done
    staging._exchange = exchange
sys.argv[0] = "quantkit"
runpy.run_module("quantkit", run_name="__main__", alter_sys=True)
"""


def _model(path: Path, seed: int, count: int = 100) -> Path:
    gen = torch.Generator().manual_seed(seed)
    save_file({f"layer.{i}.weight": torch.randn(64, generator=gen) for i in range(count)}, str(path), metadata={"format": "pt"})
    return path


def _start(args: list[str], *, delay: float = 0.0, pause: str | None = None, marker: Path | None = None,
           gate: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "QK_TEST_WRITE_DELAY": str(delay), **({"QK_TEST_GATE": str(gate)} if gate else {})}
    if pause:
        env.update(QK_TEST_PAUSE=pause, QK_TEST_MARKER=str(marker))
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantkit", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def _beside(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.glob(f".{name}.quantkit-*"))


def _wait_for(predicate, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended first: {proc.returncode} {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("timed out")


def _writing(parent: Path, name: str) -> bool:
    return any(list(p.glob("*.safetensors")) for p in parent.glob(f".{name}.quantkit-tmp-*"))


def _same(folder: Path, src: Path) -> bool:
    return load_file(str(src)).keys() == load_file(str(folder / "model.safetensors")).keys() and all(
        torch.equal(a, load_file(str(folder / "model.safetensors"))[k]) for k, a in load_file(str(src)).items()
    )


def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    first, second = _model(tmp_path / "a.safetensors", 1), _model(tmp_path / "b.safetensors", 2)
    out, gate = tmp_path / "out", tmp_path / "gate"
    gate.touch()  # the winner writes until the loser has been refused, however slow the machine
    winner = _start(["convert", str(first), "--to", "bf16", "-o", str(out), "-q"], gate=gate)
    _wait_for(lambda: _writing(tmp_path, "out"), winner)
    loser = _run(["convert", str(second), "--to", "bf16", "-o", str(out), "-q", "--force"])
    gate.unlink()
    assert loser.returncode == 5
    assert loser.stderr == f"quantkit: error: {out}: another quantkit (pid {winner.pid}) is writing this output now; wait for it to finish or choose another output\n"
    _, stderr = winner.communicate(timeout=120)
    assert winner.returncode == 0, stderr
    assert _run(["verify", str(out)]).returncode == 0
    assert {k: v.float() for k, v in load_file(str(out / "model.safetensors")).items()}.keys() == load_file(str(first)).keys()
    assert _beside(tmp_path, "out") == []


@pytest.mark.slow  # up to 3 attempts of two real processes; the lock: test_a_second_run_on_the_same_output_is_refused
def test_two_runs_started_together_one_wins(tmp_path):
    sources = [_model(tmp_path / f"{n}.safetensors", seed) for n, seed in (("a", 1), ("b", 2))]
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        procs = [_start(["reshard", str(src), "-o", str(out), "-q"], delay=0.002) for src in sources]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert sorted(code for code, _ in results) == [0, 5], results
        loser_message = next(err for code, err in results if code == 5)
        assert loser_message.startswith(f"quantkit: error: {out}: ") and (
            "another quantkit" in loser_message or "already exists" in loser_message
        ), loser_message
        winner_source = sources[[code for code, _ in results].index(0)]
        assert _same(out, winner_source)  # the output is the winner's, whole
        assert _run(["verify", str(out)]).returncode == 0
        assert _beside(tmp_path, out.name) == []


def test_a_folder_created_at_the_output_mid_run_is_kept(tmp_path):
    src = _model(tmp_path / "a.safetensors", 1)
    out = tmp_path / "out"
    proc = _start(["reshard", str(src), "-o", str(out), "-q"], delay=0.02)
    _wait_for(lambda: _writing(tmp_path, "out"), proc)
    out.mkdir()  # empty: a plain rename would have replaced it
    (tmp_path / "keep-me").mkdir()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 5
    assert stderr == f"quantkit: error: {out}: appeared while quantkit was writing; not replaced: choose another output or pass --force to replace it\n"
    assert list(out.iterdir()) == []
    assert _beside(tmp_path, "out") == []


@pytest.mark.parametrize("pause", ["before-swap", "after-swap"])
def test_sigkill_during_the_forced_swap_leaves_a_complete_output(tmp_path, pause):
    old_src, new_src = _model(tmp_path / "old.safetensors", 1), _model(tmp_path / "new.safetensors", 2)
    out = tmp_path / "out"
    assert _run(["reshard", str(old_src), "-o", str(out), "-q"]).returncode == 0
    marker = tmp_path / "marker"
    proc = _start(["reshard", str(new_src), "-o", str(out), "--force", "-q"], pause=pause, marker=marker)
    _wait_for(marker.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # the target holds one complete output: the old one before the exchange, the new one after
    assert _same(out, old_src if pause == "before-swap" else new_src)
    assert _run(["verify", str(out)]).returncode == 0
    assert len(_beside(tmp_path, "out")) == 2  # the dead run's folder and its lock file
    rerun = _run(["reshard", str(new_src), "-o", str(out), "--force", "-q"])
    assert rerun.returncode == 0, rerun.stderr
    notes = [line for line in rerun.stderr.splitlines() if "interrupted quantkit run" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: an interrupted quantkit run had left {out} unfinished: removed 1 leftover folder(s) beside it (.out.quantkit-tmp-")
    assert _beside(tmp_path, "out") == [] and _same(out, new_src)


@pytest.mark.slow  # the paused run sleeps 60 s through the swap; in-process: tests/writing/test_output_safety.py
def test_sigterm_during_the_forced_swap_says_what_is_in_place(tmp_path):
    old_src, new_src = _model(tmp_path / "old.safetensors", 1), _model(tmp_path / "new.safetensors", 2)
    out = tmp_path / "out"
    assert _run(["reshard", str(old_src), "-o", str(out), "-q"]).returncode == 0
    marker = tmp_path / "marker"
    proc = _start(["reshard", str(new_src), "-o", str(out), "--force", "-q"], pause="before-swap", marker=marker)
    _wait_for(marker.exists, proc)
    proc.send_signal(signal.SIGTERM)  # held until the swap is done (the pause sleeps through it)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert stderr.splitlines()[-1] == f"quantkit: interrupted; the output was already complete and is in place: {out}"
    assert _same(out, new_src) and _beside(tmp_path, "out") == []  # the old output removed, nothing left behind


@pytest.mark.slow  # 5 kills of real runs; the fixed moments: test_sigkill_during_the_forced_swap_leaves_a_complete_output
def test_sigkill_at_random_moments_of_forced_runs(tmp_path):
    sources = [_model(tmp_path / f"{n}.safetensors", seed, count=200) for n, seed in (("a", 1), ("b", 2))]
    out = tmp_path / "out"
    assert _run(["reshard", str(sources[0]), "-o", str(out), "-q"]).returncode == 0
    started = time.monotonic()
    assert _run(["reshard", str(sources[1]), "-o", str(out), "-q", "--force"]).returncode == 0
    duration = time.monotonic() - started
    rng = random.Random(0)
    for attempt in range(5):
        proc = _start(["reshard", str(sources[attempt % 2]), "-o", str(out), "-q", "--force"])
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert _same(out, sources[0]) or _same(out, sources[1]), f"attempt {attempt}: the output is neither complete one"
        assert _run(["verify", str(out)]).returncode == 0
    rerun = _run(["reshard", str(sources[0]), "-o", str(out), "-q", "--force"])
    assert rerun.returncode == 0 and _beside(tmp_path, "out") == [] and _same(out, sources[0])
