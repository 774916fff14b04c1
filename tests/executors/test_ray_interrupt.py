"""A real Ctrl-C: `quantkit convert ... --executor ray` run as a process of its own (its own
local Ray cluster, in its own process group), sent SIGINT once a shard is finished; then the
same command with --resume. (tests/executors/test_ray.py interrupts the driver in-process.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from quantkit.executors.resume import PLAN_FILE  # noqa: E402

from processes import as_a_terminal_job  # noqa: E402
from test_ray import _files, model  # noqa: E402,F401 (the same small Llama-shaped folder)

pytestmark = [pytest.mark.ray, pytest.mark.slow]
MAX_SIZE = "20KB"  # about 25 shards of int8: the run is still going when the first is finished
START_S, RUN_S = 180, 240  # a driver starting its own cluster on a loaded 2-core machine


def _command(model: Path, out: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "quantkit", "convert", str(model), "--to", "int8", "-o", str(out), "--max-size", MAX_SIZE,
            "--device", "cpu", "--executor", "ray", "-q", *more]


def _finished(record: Path) -> list[str]:
    try:
        return sorted(json.loads(record.read_text())["done"])
    except (OSError, ValueError, KeyError):  # not there yet
        return []


def test_ctrl_c_keeps_the_finished_shards_and_resume_finishes_with_the_same_bytes(cli, model, tmp_path):
    out = tmp_path / "ray"
    partial = tmp_path / ".ray.quantkit-partial"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(_command(model, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True, preexec_fn=as_a_terminal_job)
    try:
        deadline = time.monotonic() + START_S
        while not _finished(partial / PLAN_FILE) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert driver.poll() is None, driver.communicate()
        os.killpg(driver.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the driver and the Ray processes it started
        stdout, stderr = driver.communicate(timeout=RUN_S)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("quantkit: interrupted; ") and "rerun the same command with --resume" in stderr
    assert not out.exists() and partial.is_dir()
    assert not (partial / "model.safetensors.index.json").exists() and not (partial / "quantkit.json").exists()
    done = _finished(partial / PLAN_FILE)
    assert f"{len(done)} finished shard(s) are kept in {partial}" in stderr
    written = {name: ((partial / name).stat().st_ino, (partial / name).stat().st_mtime_ns) for name in done}

    resumed = subprocess.run(_command(model, out, "--resume", "--json"), capture_output=True, text=True, env=env, timeout=START_S + RUN_S)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["shards_kept"] == done and summary["shards_converted"]  # the interrupt left shards to do
    assert sorted(summary["shards_kept"] + summary["shards_converted"]) == sorted(n for n in summary["files"] if n.endswith(".safetensors"))
    assert {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in done} == written  # kept, not rewritten
    assert not partial.exists()
    assert cli("convert", model, "--to", "int8", "-o", tmp_path / "local", "--max-size", MAX_SIZE, "--device", "cpu", "-q").exit_code == 0
    assert _files(out) == _files(tmp_path / "local")
