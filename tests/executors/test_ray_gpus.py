"""--ray-gpus-per-task on a local Ray cluster that declares one logical GPU (this machine has
none): each task is scheduled with the GPU resource (Ray's GPU ids come back in --json); with
--device auto a task without CUDA quantizes with the CPU kernels, same bytes as a local run;
--device cuda where a task sees no CUDA, and more GPUs per task than the cluster has, are one
line and exit 2. The checks that need no cluster are in tests/cli/test_executor_options.py."""

from __future__ import annotations

import json
import logging

import pytest

ray = pytest.importorskip("ray")

from test_ray import MAX_SIZE, _files, model  # noqa: E402,F401 (the same small Llama-shaped folder)

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def gpu_cluster():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
             log_to_driver=False)
    yield
    ray.shutdown()


def _convert(cli, model, out, *more):
    return cli("convert", model, "--to", "int8", "-o", out, "--max-size", MAX_SIZE, "--executor", "ray", *more)


@pytest.mark.parametrize("gpus", ["1", "0.5"])
def test_tasks_get_the_gpu_and_auto_keeps_the_bytes_without_cuda(gpu_cluster, cli, model, tmp_path, gpus):
    result = _convert(cli, model, tmp_path / "ray", "--device", "auto", "--ray-gpus-per-task", gpus, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    shards = summary["shards_converted"]
    assert len(shards) >= 3
    assert summary["task_gpu_ids"] == {name: ["0"] for name in shards}  # scheduled with the cluster's one GPU
    assert summary["task_devices"] == {name: "cpu" for name in shards}  # no CUDA here: the CPU kernels
    assert cli("convert", model, "--to", "int8", "-o", tmp_path / "local", "--max-size", MAX_SIZE, "--device", "auto", "-q").exit_code == 0
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_without_gpus_per_task_tasks_get_none(gpu_cluster, cli, model, tmp_path):
    result = _convert(cli, model, tmp_path / "ray", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(map(tuple, summary["task_gpu_ids"].values())) == {()}


def test_device_cuda_where_a_task_sees_no_cuda_is_one_line(gpu_cluster, cli, model, tmp_path):
    """The driver needs no GPU for --device cuda: the task finds out, and says so."""
    result = _convert(cli, model, tmp_path / "ray", "--device", "cuda")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "shard task(s) failed, first model-" in result.stderr
    assert "--device cuda: a Ray task sees no CUDA device (CUDA_VISIBLE_DEVICES=0)" in result.stderr


def test_more_gpus_per_task_than_the_cluster_has_is_refused(gpu_cluster, cli, model, tmp_path):
    result = _convert(cli, model, tmp_path / "ray", "--device", "auto", "--ray-gpus-per-task", "2")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("quantkit: error: --ray-gpus-per-task 2: the Ray cluster (started here) has 1 GPU(s) in all; "
                                     "use a cluster with GPUs, or --device cpu")
    assert not list(tmp_path.iterdir())  # refused before anything was staged
