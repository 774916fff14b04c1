"""Remote sources on a GPT-2-large-shaped checkpoint served from this machine's loopback.

    .venv/bin/python benchmarks/bench_remote.py                     # HTTP and S3 (moto), bf16
    .venv/bin/python benchmarks/bench_remote.py --via http --schemes bf16,int8
    .venv/bin/python benchmarks/bench_remote.py --via s3 --s3-output --size small
    .venv/bin/python benchmarks/bench_remote.py --folder path/to/hf-folder

For each way of serving (a local Range server over HTTP; moto's S3 server) it measures, with
the quantkit CLI in a subprocess (its peak RSS from ``wait4``):

- ``inspect`` of the remote folder: seconds and bytes fetched, against the checkpoint's size
  and against downloading the whole folder first (a plain GET per file over HTTP, s3fs'
  ``get_file`` for S3);
- ``convert`` remote -> local folder: seconds, peak RSS and bytes fetched, against the same
  conversion local -> local measured in the same run;
- with ``--s3-output``, ``convert`` S3 -> S3 (``-o s3://bench/out-SCHEME``): the same figures
  and the bytes uploaded.

Loopback has no network latency or bandwidth limit: the times show quantkit's own costs, and
bytes fetched is the figure that carries over to a real network. moto runs in a process of
its own (so that the CLI's peak RSS is its own). moto answers every ranged GET by reading the
whole object and slicing it (``FakeKey.value``, then ``_handle_range_header``), so with
quantkit's 4 MiB chunks a convert costs moto (object size x requests) of copying: about 190 GB
for a 3 GB checkpoint. S3 itself reads only the range; the benchmark's moto is patched to do
the same (``_serve_ranges_lazily``), and ``--moto-as-is`` runs it unpatched.
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
    print(f"  quantkit {' '.join(args[:2])}...: {elapsed:.1f} s wall, {usage.ru_utime + usage.ru_stime:.1f} s CPU", flush=True)
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
    index = "model.safetensors.index.json" if (folder / "model.safetensors.index.json").is_file() else "model.safetensors"
    return f"{server.url}/{index}", (_http_get, [f"{server.url}/{n}" for n in files]), {}, server.stop, None


def _serve_ranges_lazily() -> None:
    """Patch moto (in its own process) so a ranged GET reads only its range, as S3 does:
    during a single-range GET, ``FakeKey.value`` is a view that reads the slice asked for."""
    import re
    import threading

    from moto.s3 import models, responses

    local = threading.local()
    whole = models.FakeKey.value

    class _Lazy:
        def __init__(self, key):
            self.key = key

        def __len__(self):
            return self.key.size

        def __getitem__(self, part: slice) -> bytes:
            with self.key.lock:
                self.key._value_buffer.seek(part.start)
                return self.key._value_buffer.read(part.stop - part.start)

    def value(key):
        return _Lazy(key) if getattr(local, "ranged", False) else whole.fget(key)

    models.FakeKey.value = property(value, whole.fset)
    real_key_response = responses.S3Response.key_response

    def key_response(self, request, full_url, headers):
        local.ranged = request.method == "GET" and bool(re.match(r"^bytes=\d+-\d+$", request.headers.get("range") or ""))
        try:
            return real_key_response(self, request, full_url, headers)
        finally:
            local.ranged = False

    responses.S3Response.key_response = key_response


def moto_main(as_is: bool, folder: str) -> None:
    """The moto process: upload ``folder`` to s3://bench/model, print its port and the upload's
    seconds, serve until stdin closes. (Uploading here keeps the benchmark's own process small:
    a child's peak RSS from wait4 includes that of the process it was forked from.)"""
    from moto.server import ThreadedMotoServer

    if not as_is:
        _serve_ranges_lazily()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    import s3fs

    # a long read timeout: moto answers CompleteMultipartUpload only once it has joined the
    # parts in memory (minutes for 1 GB on a loaded machine); a retry meanwhile finds them gone
    fs = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs={"read_timeout": 900})
    fs.mkdir("bench")
    started = time.perf_counter()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            fs.put_file(str(path), f"bench/model/{path.name}", max_concurrency=1)  # moto loses parts uploaded 10 at a time (seen: "seek of closed file")
    print(port, time.perf_counter() - started, flush=True)
    sys.stdin.read()
    server.stop()


def serve_s3(folder: Path, *, as_is: bool = False):
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "QUANTKIT_REMOTE_TIMEOUT_S": "900"}  # as above, for quantkit's own uploads to moto
    os.environ.update(env)
    moto = subprocess.Popen([sys.executable, "-c", f"import bench_remote; bench_remote.moto_main({as_is}, {str(folder)!r})"], cwd=HERE,
                            env={**os.environ, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(os.devnull if os.environ.get("BENCH_MOTO_LOG") is None else os.environ["BENCH_MOTO_LOG"], "w"), text=True)
    port, seconds = moto.stdout.readline().split()
    env["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    print(f"uploaded to moto (s3fs put_file) in {float(seconds):.1f} s", flush=True)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    files = sorted(p.name for p in folder.iterdir() if p.is_file())

    def stop():
        moto.stdin.close()
        moto.wait(30)

    return "s3://bench/model", (fs.get_file, [f"bench/model/{n}" for n in files]), env, stop, fs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, help="a Hugging Face folder (default: bench_convert's cached GPT-2-large)")
    parser.add_argument("--via", default="http,s3", help="comma-separated: http, s3")
    parser.add_argument("--schemes", default="bf16", help="comma-separated convert targets ('' for inspect only)")
    parser.add_argument("--no-local", action="store_true", help="skip the local -> local baseline")
    parser.add_argument("--size", default="large", help="bench_convert's checkpoint when no --folder: small, large, ...")
    parser.add_argument("--s3-output", action="store_true", help="also convert S3 -> S3 (-o s3://bench/out-SCHEME)")
    parser.add_argument("--no-s3-input", action="store_true", help="with --s3-output: skip S3 -> local")
    parser.add_argument("--moto-as-is", action="store_true", help="moto unpatched: every ranged GET reads the whole object")
    args = parser.parse_args(argv)
    schemes = [s for s in args.schemes.split(",") if s]  # "" for inspect only
    folder = args.folder
    if folder is None:
        sys.path.insert(0, str(HERE))
        from bench_convert import build_checkpoint

        folder = build_checkpoint(args.size)
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
            url, (get, paths), extra_env, stop, fs = serve_http(folder) if via == "http" else serve_s3(folder, as_is=args.moto_as_is)
            try:
                run_env = {**env, **extra_env}
                anatomy, seconds, rss = run_cli("inspect", url, "--json", env=run_env)
                rows.append((via, "inspect", seconds, rss, anatomy["bytes_fetched"]))
                for scheme in [] if via == "s3" and args.no_s3_input else schemes:
                    summary, seconds, rss = run_cli("convert", url, "--to", scheme, "-o", f"{work}/{via}-{scheme}", "-q", "--json", env=run_env)
                    rows.append((via, f"convert {scheme}", seconds, rss, summary["bytes_fetched"]))
                    shutil.rmtree(f"{work}/{via}-{scheme}")
                for scheme in schemes if via == "s3" and args.s3_output else []:
                    summary, seconds, rss = run_cli("convert", url, "--to", scheme, "-o", f"s3://bench/out-{scheme}", "-q", "--json", env=run_env)
                    uploaded = sum(fs.du(f"bench/out-{scheme}", total=False).values())
                    rows.append(("s3", f"convert {scheme} -> s3", seconds, rss, summary["bytes_fetched"]))
                    print(f"s3 -> s3 {scheme}: uploaded {uploaded:,} bytes in {len(summary['files'])} files", flush=True)
                    fs.rm(f"bench/out-{scheme}", recursive=True)
                rows.append((via, "download all first", download_all(get, paths), None, size))  # last: it grows this process
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
