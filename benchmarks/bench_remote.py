"""Remote sources on a GPT-2-large-shaped checkpoint served from this machine's loopback.

    .venv/bin/python benchmarks/bench_remote.py                     # HTTP and S3 (moto), bf16
    .venv/bin/python benchmarks/bench_remote.py --via http --schemes bf16,int8
    .venv/bin/python benchmarks/bench_remote.py --folder path/to/hf-folder

For each way of serving (a local Range server over HTTP; moto's S3 server) it measures, with
the quantkit CLI in a subprocess (its peak RSS from ``wait4``):

- ``inspect`` of the remote folder: seconds and bytes fetched, against the checkpoint's size
  and against downloading the whole folder first (a plain GET per file over HTTP, s3fs'
  ``get_file`` for S3);
- ``convert`` remote -> local folder: seconds, peak RSS and bytes fetched, against the same
  conversion local -> local measured in the same run.

Loopback has no network latency or bandwidth limit: the times show quantkit's own costs, and
bytes fetched is the figure that carries over to a real network. moto reads a whole object
for every ranged GET, so a convert from moto takes minutes per GB here (moto's cost, not
S3's): run S3 with ``--schemes ''`` for inspect and the download baseline only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "sources"))  # the test servers


def run_cli(*args: str, env: dict[str, str]) -> tuple[dict | str, float, int]:
    """Output (JSON when it parses), seconds, peak RSS in bytes of ``quantkit ARGS``."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "quantkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"quantkit {' '.join(args)} failed: {err.strip()}")
    try:
        return json.loads(out), elapsed, usage.ru_maxrss * 1024
    except ValueError:
        return out, elapsed, usage.ru_maxrss * 1024


def download_all(get, paths: list[str]) -> float:
    """Seconds to copy every file to a temporary folder with ``get(path, local_file)``."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            get(path, str(Path(tmp) / path.rsplit("/", 1)[-1]))
    return time.perf_counter() - started


def _http_get(url: str, local: str) -> None:
    """One plain GET (no ranges), streamed to ``local``."""
    import urllib.request

    with urllib.request.urlopen(url) as r, open(local, "wb") as f:
        shutil.copyfileobj(r, f, 8 << 20)


def serve_http(folder: Path):
    from remote_fixtures import RangeServer

    server = RangeServer(folder).start()
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    return f"{server.url}/model.safetensors.index.json", (_http_get, [f"{server.url}/{n}" for n in files]), {}, server.stop


def serve_s3(folder: Path):
    from moto.server import ThreadedMotoServer

    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bench")
    started = time.perf_counter()
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    for name in files:
        fs.put_file(str(folder / name), f"bench/model/{name}")
    print(f"uploaded to moto in {time.perf_counter() - started:.1f} s", flush=True)
    return "s3://bench/model", (fs.get_file, [f"bench/model/{n}" for n in files]), env, server.stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, help="a Hugging Face folder (default: bench_convert's cached GPT-2-large)")
    parser.add_argument("--via", default="http,s3", help="comma-separated: http, s3")
    parser.add_argument("--schemes", default="bf16", help="comma-separated convert targets ('' for inspect only)")
    parser.add_argument("--no-local", action="store_true", help="skip the local -> local baseline")
    args = parser.parse_args(argv)
    schemes = [s for s in args.schemes.split(",") if s]  # "" for inspect only
    folder = args.folder
    if folder is None:
        sys.path.insert(0, str(HERE))
        from bench_convert import build_checkpoint

        folder = build_checkpoint("large")
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    env = {**os.environ, "QUANTKIT_REMOTE_RETRIES": "2"}
    print(f"checkpoint {folder}: {size:,} bytes in {sum(1 for p in folder.iterdir() if p.is_file())} files", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for scheme in [] if args.no_local else schemes:
            _, seconds, rss = run_cli("convert", str(folder), "--to", scheme, "-o", f"{work}/local-{scheme}", "-q", "--json", env=env)
            rows.append(("local", f"convert {scheme}", seconds, rss, None))
            shutil.rmtree(f"{work}/local-{scheme}")
        for via in args.via.split(","):
            url, (get, paths), extra_env, stop = (serve_http if via == "http" else serve_s3)(folder)
            try:
                run_env = {**env, **extra_env}
                anatomy, seconds, rss = run_cli("inspect", url, "--json", env=run_env)
                # a child's peak RSS counts, up to its exec, the pages of the process that forked it:
                # with moto holding the checkpoint in this process, an S3 figure would be moto's
                rss = rss if via == "http" else None
                rows.append((via, "inspect", seconds, rss, anatomy["bytes_fetched"]))
                rows.append((via, "download all first", download_all(get, paths), None, size))
                for scheme in schemes:
                    summary, seconds, rss = run_cli("convert", url, "--to", scheme, "-o", f"{work}/{via}-{scheme}", "-q", "--json", env=run_env)
                    rss = rss if via == "http" else None
                    rows.append((via, f"convert {scheme}", seconds, rss, summary["bytes_fetched"]))
                    shutil.rmtree(f"{work}/{via}-{scheme}")
            finally:
                stop()
    print(f"\n{'source':<7}{'operation':<22}{'seconds':>9}{'peak RSS':>12}{'bytes fetched':>17}{'of checkpoint':>15}")
    for via, what, seconds, rss, fetched in rows:
        rss_text = f"{rss / 1e9:.2f} GB" if rss else "-"
        fetched_text = f"{fetched:,}" if fetched is not None else "-"
        share = f"{fetched / size:.4%}" if fetched is not None else "-"
        print(f"{via:<7}{what:<22}{seconds:>9.2f}{rss_text:>12}{fetched_text:>17}{share:>15}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
