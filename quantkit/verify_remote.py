"""``verify`` of a remote checkpoint (``s3://``, ``hf://``, ``https://``), read by ranged requests.

A folder (an S3 prefix, a Hub repository) is first checked to be complete: a prefix holding
objects but neither an index nor ``quantkit.json`` (or a quantkit index without its
``quantkit.json``, uploaded after it) is an output whose writing was interrupted or is still
running, and is reported as incomplete without reading further. Otherwise, as for a local
folder: every header is parsed and checked, the index covers every tensor once, and every file
``quantkit.json`` or the index records is read once, in ``request_bytes`` ranges, and its size
and SHA-256 compared (a shard's own header record too). Over HTTP there is no listing: name
the index or the ``.safetensors`` file; ``quantkit.json`` is looked for beside it.
"""

from __future__ import annotations

import hashlib

from . import jsonio
from .errors import InputError
from .layout import MANIFEST, SELF_CHECKSUM_V2_KEY, SELF_SHA256_KEY, ST_INDEX, parse_index
from .safetensors_format import HEADER_LENGTH_BYTES, SafetensorsHeader
from .sources.remote import RemoteFile, RemoteOptions, RemoteStore, display_url
from .sources.remote_safetensors import read_remote_header
from .verify import VerifyReport, _check_aliases, _check_coverage, _check_index_records, _is_sha256, _safe_relative, _self_record, compare_digests
from .writing.selfsum import stream_digests


def verify_remote(url: str, *, options: RemoteOptions | None = None) -> VerifyReport:
    """Check a remote checkpoint; return every problem found.

    Args:
        url: ``s3://bucket/prefix`` or ``hf://org/model[@revision]`` (a folder), or the URL of
            an index or ``.safetensors`` file (any scheme).
        options: timeouts and retries (default: from the environment).

    Raises:
        InputError: the URL cannot be read (no such bucket, key or repository, access denied).

    Example:
        >>> verify_remote("s3://bucket/model-int8").ok  # doctest: +SKIP
        True
    """
    store = RemoteStore(url, options or RemoteOptions.from_environment())
    shown = display_url(url)
    files, listed = _files(store, url)
    report = VerifyReport(shown, "safetensors", [])
    base = shown if listed else shown.rsplit("/", 1)[0]  # the folder, in messages
    incomplete = _incomplete(store, shown, files)
    if incomplete:
        report.format = "incomplete"
        report.problems.append(incomplete)
        return report
    index = files.get(ST_INDEX)
    weight_map, index_meta = (None, {})
    if index is not None:
        report.format = "safetensors-sharded"
        try:
            weight_map, index_meta = parse_index(index.url, store.read(index, 0, index.size))
        except InputError as exc:
            report.problems.append(str(exc))
            return report
        shard_names = list(dict.fromkeys(weight_map.values()))
    else:
        shard_names = sorted(n for n in files if n.endswith(".safetensors"))
    report.files = shard_names
    manifest = _manifest(store, files.get(MANIFEST), report)
    if not listed:  # no listing (HTTP, a file URL): look for the files named, beside the one named
        _probe(store, url, files, [*shard_names, *manifest.get("files", {})])
    headers = _headers(store, files, shard_names, base, report)
    _check_coverage(index.url if index else shown, headers, weight_map, report)
    _check_aliases(headers, report)
    report.num_tensors = sum(len(h.entries) for h in headers.values())
    report.total_bytes = sum(e.spec.nbytes for h in headers.values() for e in h.entries.values())
    _check_index_records(index.url if index else None, shard_names, index_meta, report)
    _check_checksums(store, files, shard_names, manifest, index_meta, headers, base, report)
    return report


def _probe(store: RemoteStore, url: str, files: dict[str, RemoteFile], names) -> None:
    """Add the files ``names`` beside ``url`` that exist (one ranged GET or lookup each)."""
    path = url if store.scheme == "http" else url.split("://", 1)[1]
    folder = path.rsplit("/", 1)[0]
    for name in names:
        if name in files or not _safe_relative(name) or "/" in name:
            continue
        try:
            files[name], _ = store.probe(f"{folder}/{name}")
        except InputError:
            pass  # reported as missing by the checks that need it


def _files(store: RemoteStore, url: str) -> tuple[dict[str, RemoteFile], bool]:
    """The files of the folder ``url`` names (and True), or (False) the file it names and a
    ``quantkit.json`` beside it, where there is one: HTTP has no listing."""
    path = url if store.scheme == "http" else url.split("://", 1)[1].rstrip("/")
    if store.scheme != "http" and store.info(path).get("type") == "directory":
        listing = {}
        for entry in store.ls(path):
            name = str(entry.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
            size = entry.get("size")
            if entry.get("type") == "file" and name and type(size) is int:
                listing[name] = RemoteFile(entry["name"], store.url_of(entry["name"]), size)
        if not listing:
            raise InputError(f"{display_url(url)}: nothing here to verify (no files under this prefix)")
        return listing, True
    file, _ = store.probe(path)
    found = {file.name: file}
    folder = path.rsplit("/", 1)[0]
    try:
        manifest, _ = store.probe(f"{folder}/{MANIFEST}")
        found[MANIFEST] = manifest
    except InputError:
        pass  # none beside it (or unreadable): checksums are then those of the index and headers
    return found, False


def _incomplete(store: RemoteStore, shown: str, files: dict[str, RemoteFile]) -> str:
    """Why the folder is an unfinished output ('' when it is not)."""
    fix = f"rerun the command that wrote it with --force to replace it, or delete the prefix (e.g. aws s3 rm --recursive {shown}/)"
    shards = [n for n in files if n.endswith(".safetensors")]
    if ST_INDEX in files:
        if MANIFEST not in files and b'"quantkit_version"' in store.read(files[ST_INDEX], 0, min(files[ST_INDEX].size, 16 << 20)):
            return f"{shown}: incomplete: a quantkit index without its {MANIFEST} (uploaded last): the writing was interrupted; {fix}"
        return ""
    if MANIFEST in files:
        return ""
    if len(shards) == 1:
        header = read_remote_header(store, files[shards[0]])
        if not {SELF_SHA256_KEY, SELF_CHECKSUM_V2_KEY} & set(header.metadata):
            return ""  # a plain single-file checkpoint, not quantkit's (which carries its own record)
    return (f"{shown}: incomplete: {len(shards)} shard(s) but no {ST_INDEX} or {MANIFEST} (an output whose writing was "
            f"interrupted or is still running); {fix}")


def _headers(store: RemoteStore, files: dict[str, RemoteFile], shard_names: list[str], base: str, report: VerifyReport) -> dict[str, SafetensorsHeader]:
    headers = {}
    for shard in shard_names:
        if shard not in files:
            report.problems.append(f"{base}/{shard}: shard named by the index is missing")
            continue
        try:
            headers[shard] = read_remote_header(store, files[shard])
        except InputError as exc:
            report.problems.append(str(exc))
    return headers


def _manifest(store: RemoteStore, file: RemoteFile | None, report: VerifyReport) -> dict:
    if file is None:
        return {}
    try:
        manifest = jsonio.loads(store.read(file, 0, min(file.size, store.options.max_small_file_bytes)))
    except jsonio.BadJson:
        report.problems.append(f"{file.url}: not valid JSON")
        return {}
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        report.problems.append(f"{file.url}: 'files' must map file names to their bytes and sha256")
        return {}
    for name, entry in manifest["files"].items():
        if not _safe_relative(name) or not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int) or not _is_sha256(entry.get("sha256")):
            report.problems.append(f"{file.url}: the record of {name!r} is damaged")
    return manifest


def _check_checksums(store, files, shard_names, manifest, index_meta, headers, base: str, report: VerifyReport) -> None:
    """Sizes and SHA-256 against quantkit.json, the index and each shard's own record; each
    file read once. Files in subfolders (none that quantkit writes to S3 today) are skipped."""
    recorded: dict[str, list[tuple[str, str]]] = {}
    for name, entry in manifest.get("files", {}).items():
        if not isinstance(entry, dict) or not _is_sha256(entry.get("sha256")) or "/" in str(name):
            continue
        if name not in files:
            report.problems.append(f"{base}/{name}: listed in {MANIFEST} but missing")
            continue
        if entry.get("bytes") != files[name].size:
            report.problems.append(f"{files[name].url}: {files[name].size} bytes, {MANIFEST} records {entry.get('bytes')}")
        recorded.setdefault(name, []).append((MANIFEST, entry["sha256"]))
    sums = index_meta.get("sha256") if isinstance(index_meta.get("sha256"), dict) else {}
    for name, digest in sums.items():
        if isinstance(digest, str) and name in shard_names and name in files:
            recorded.setdefault(name, []).append(("the index", digest))
    own = {name: h for name, h in headers.items() if _self_record(h, report)}
    if not recorded and not own:
        return
    mismatched = False
    for name in dict.fromkeys([*recorded, *own]):
        actual, own_actual = _remote_digests(store, files[name], own.get(name))
        mismatched |= compare_digests(files[name].url, actual, own_actual, recorded.get(name, []), own.get(name), report)
    report.checksums = "mismatch" if mismatched else "verified"


def _remote_digests(store: RemoteStore, file: RemoteFile, header: SafetensorsHeader | None) -> tuple[str, str | None]:
    step = store.options.request_bytes
    blocks = lambda begin, end: (store.read(file, at, min(at + step, end)) for at in range(begin, end, step))  # noqa: E731
    if header is None:
        whole = hashlib.sha256()
        for block in blocks(0, file.size):
            whole.update(block)
        return whole.hexdigest(), None
    return stream_digests(blocks, file.size, header)
