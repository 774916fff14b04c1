"""SIGINT / SIGTERM mid-run: exit 130, no temporary folder, no target, an old output untouched.

The runs are real ``python -m quantkit`` processes. To make "mid-run" certain rather than a
race, the first tests slow each tensor write down with a wrapper that patches
``ShardWriter.write`` and ``write_piece`` before running the module (no environment variable involved); the last
test uses a checkpoint big enough to take a while unpatched.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from processes import as_a_terminal_job

REPO = Path(__file__).resolve().parents[2]
SLOW_MAIN = """
import runpy, sys, time
from quantkit.writing import shard as writer
def slowed(method):
    def slow(self, *args):
        time.sleep(0.05)
        return method(self, *args)
    return slow
# whole tensors go through write, chunks (casts, reshard) through write_piece
writer.ShardWriter.write = slowed(writer.ShardWriter.write)
writer.ShardWriter.write_piece = slowed(writer.ShardWriter.write_piece)
sys.argv[0] = "quantkit"
runpy.run_module("quantkit", run_name="__main__", alter_sys=True)
"""


def _many_tensors(path: Path, count: int = 200, numel: int = 256) -> Path:
    gen = torch.Generator().manual_seed(0)
    save_file({f"layer.{i}.weight": torch.randn(numel, generator=gen) for i in range(count)}, str(path), metadata={"format": "pt"})
    return path


def _staging(parent: Path, name: str) -> list[Path]:
    return list(parent.glob(f".{name}.quantkit-*"))


def _start(args: list[str], *, slow: bool) -> subprocess.Popen:
    prefix = [sys.executable, "-c", SLOW_MAIN] if slow else [sys.executable, "-m", "quantkit"]
    return subprocess.Popen(prefix + args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_a_terminal_job)


def _wait_for_shard(proc: subprocess.Popen, parent: Path, name: str, timeout_s: float = 60) -> bool:
    """Wait until the run has written into its staging folder; False if it ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if any(list(s.glob("*.safetensors")) for s in _staging(parent, name)):
            return True
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run never started writing")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_leaves_nothing(tmp_path, signum):
    src = _many_tensors(tmp_path / "model.safetensors")
    out = tmp_path / "out"
    proc = _start(["reshard", str(src), "-o", str(out), "--max-size", "10KB", "-q"], slow=True)
    assert _wait_for_shard(proc, tmp_path, "out")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "quantkit: interrupted; partial output removed"
    assert "Traceback" not in stderr
    assert not out.exists()
    assert _staging(tmp_path, "out") == []


def test_signal_during_forced_run_keeps_the_old_output(tmp_path):
    src = _many_tensors(tmp_path / "model.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old output")
    proc = _start(["reshard", str(src), "-o", str(out), "--force", "-q"], slow=True)
    assert _wait_for_shard(proc, tmp_path, "out")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"old output"
    assert _staging(tmp_path, "out") == []


@pytest.mark.slow
def test_signal_during_an_unpatched_run_of_a_big_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {f"layer.{i}.weight": torch.randn(1024, 1024, generator=gen) for i in range(96)}  # 384 MiB
    src = tmp_path / "model.pth"
    torch.save(tensors, src)
    del tensors
    out = tmp_path / "out"
    proc = _start(["reshard", str(src), "-o", str(out), "--max-size", "8MiB", "-q"], slow=False)
    if not _wait_for_shard(proc, tmp_path, "out"):
        pytest.skip("the run finished before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, stderr
    assert not out.exists()
    assert _staging(tmp_path, "out") == []
