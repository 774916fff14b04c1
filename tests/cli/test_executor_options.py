"""--executor / --ray-address / --resume checked before anything is read, and Ray optional:
never imported unless --executor ray, and a one-line install hint when it is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "dask"], "unknown --executor 'dask': choose local or ray"),
        (["--resume"], "--resume applies to --executor ray only"),
        (["--ray-address", "127.0.0.1:6379"], "--ray-address applies to --executor ray only"),
        (["--ray-gpus-per-task", "1"], "--ray-gpus-per-task applies to --executor ray only"),
        (["--executor", "ray", "--device", "cpu", "--ray-gpus-per-task", "1"],
         "--ray-gpus-per-task 1 with --device cpu: the GPUs would go unused; use --device cuda or auto"),
        (["--executor", "ray", "--device", "cuda", "--ray-gpus-per-task", "0"],
         "--device cuda with --ray-gpus-per-task 0: tasks would share GPUs Ray does not schedule; give each task one (the default) or a fraction"),
        (["--executor", "ray", "--device", "cuda:1"],
         "--device cuda:1 with --executor ray: a task sees only the GPUs Ray gives it, numbered from 0; use --device cuda"),
        (["--executor", "ray", "--ray-gpus-per-task", "1.5"],
         "--ray-gpus-per-task 1.5: give 0, a fraction of one GPU up to 1 (e.g. 0.5), or a whole number"),
        (["--executor", "ray", "--ray-gpus-per-task", "-1"],
         "--ray-gpus-per-task -1: give 0, a fraction of one GPU up to 1 (e.g. 0.5), or a whole number"),
        (["--executor", "ray", "--ray-gpus-per-task", "nan"],
         "--ray-gpus-per-task nan: give 0, a fraction of one GPU up to 1 (e.g. 0.5), or a whole number"),
    ],
)
def test_executor_options_refused_before_reading(cli, tmp_path, args, message):
    result = cli("convert", tmp_path / "missing.safetensors", "--to", "bf16", "-o", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"quantkit: error: {message}"
    assert not (tmp_path / "out").exists()


def test_executor_ray_without_ray_installed_says_how_to_install(cli, small_pth, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = cli("convert", small_pth, "--to", "bf16", "-o", tmp_path / "out", "--executor", "ray")
    assert result.exit_code == 2
    assert result.stderr.strip() == "quantkit: error: --executor ray needs Ray: pip install 'quantkit[ray]'"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.quantkit-*"))


def test_the_library_and_the_cli_do_not_import_ray():
    code = ("import sys, quantkit, quantkit.convert, quantkit.executors, quantkit_cli.main, quantkit_cli.convert_cmd; "
            "print('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
