"""Check a checkpoint against itself and against the checksums recorded when it was written.

For safetensors (one file, or shards with an index): every header is parsed and checked
(dtypes, shapes, offsets without holes or overlaps, data filling the file exactly), the index
covers every tensor exactly once, the recorded sizes agree, and each shard's SHA-256 matches
``quantkit.json`` and the index's ``metadata.sha256`` when they were recorded. Other formats
are checked by opening them as quantkit would read them (pickle metadata, index coverage).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import jsonio
from .errors import InputError
from .layout import ALIASES_KEY, MANIFEST, SELF_SHA256_KEY, SELF_CHECKSUM_V2_KEY, ST_INDEX, WEIGHT_SUFFIXES, parse_index, safetensors_in
from .sources import open_checkpoint
from .safetensors_format import SafetensorsHeader, read_header
from .writing.selfsum import file_digests, sha256_of
from .sources.base import detect_torch_format
from .sources.hfconfig import check_config
from .sources.ziprecords import check_all_crcs



@dataclass
class VerifyReport:
    """What ``verify_checkpoint`` found. ``problems`` is empty when the checkpoint is sound."""

    path: str
    format: str
    files: list[str]
    num_tensors: int = 0
    total_bytes: int = 0
    checksums: str = "not recorded"  # "verified", "not recorded", or "mismatch"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def verify_checkpoint(path: str | Path) -> VerifyReport:
    """Check a checkpoint folder or file; return every problem found (never stops at the first).

    Args:
        path: a folder quantkit wrote, a Hugging Face model folder, a ``.safetensors`` file,
            an index ``.json``, or a PyTorch checkpoint.

    Returns:
        A VerifyReport; ``report.ok`` is True when nothing is wrong.

    Raises:
        InputError: the path does not exist or holds no checkpoint at all.

    Example:
        >>> report = verify_checkpoint("model-safetensors")  # doctest: +SKIP
        >>> report.ok, report.checksums
        (True, 'verified')
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    located = _locate_safetensors(path)
    if located is None and path.is_dir() and (path / MANIFEST).is_file():
        located = (path, None, [])  # a folder quantkit wrote whose shards are gone: its manifest says what is missing
    if located is None:
        return _verify_other(path)
    folder, index_path, shard_names = located
    report = VerifyReport(str(path), "safetensors-sharded" if index_path else "safetensors", list(shard_names))
    weight_map: dict[str, str] | None = None
    index_meta: dict = {}
    if index_path is not None:
        weight_map, index_meta, shard_names = _read_index(index_path, report)
        if weight_map == {}:
            report.problems.append(f"{index_path}: the index maps no tensors (its weight_map is empty)")
        report.files = list(shard_names)
        for stray in sorted(set(p.name for p in folder.glob("*.safetensors")) - set(shard_names)):
            report.notes.append(f"{folder / stray}: not named by the index (its tensors are not part of this checkpoint)")
    if path.is_dir() and (folder / "config.json").is_file():  # as open_checkpoint checks a folder's config
        try:
            check_config(folder / "config.json")
        except InputError as exc:
            report.problems.append(str(exc))
    headers = _read_headers(folder, shard_names, report)
    _check_coverage(index_path or folder, headers, weight_map, report)
    _check_aliases(headers, report)
    report.num_tensors = sum(len(h.entries) for h in headers.values())
    report.total_bytes = sum(e.spec.nbytes for h in headers.values() for e in h.entries.values())
    if headers and not report.num_tensors:
        report.problems.append(f"{path}: the checkpoint holds no tensors")
    manifest = _read_manifest(folder, report)
    written_by_quantkit = bool(manifest) or "quantkit_version" in index_meta
    if index_path is not None and len(headers) == len(shard_names):
        _check_total_size(index_path, index_meta.get("total_size"), report, strict=written_by_quantkit)
    if manifest and len(headers) == len(shard_names) and manifest.get("total_size") is not None:
        _check_total_size(folder / MANIFEST, manifest.get("total_size"), report, strict=True)
    if not shard_names and manifest:
        report.problems.append(f"{folder}: no shard found; {MANIFEST} records what quantkit wrote here")
    _check_index_records(index_path, shard_names, index_meta, report)
    _check_checksums(folder, shard_names, manifest, index_meta, report, headers)
    if manifest:
        _note_unlisted_files(folder, manifest, shard_names, report)
    return report


def _locate_safetensors(path: Path) -> tuple[Path, Path | None, list[str]] | None:
    """(folder, index or None, shard file names), or None when the checkpoint is not safetensors."""
    if path.is_dir():
        found = safetensors_in(path)
        if found is None:
            return None
        return (path, found, []) if found.name == ST_INDEX else (path, None, [found.name])
    if path.name.endswith(".safetensors.index.json"):
        return path.parent, path, []
    if path.suffix == ".safetensors":
        return path.parent, None, [path.name]
    return None


def _verify_other(path: Path) -> VerifyReport:
    """A PyTorch checkpoint or ``.bin`` folder: check it opens as quantkit reads it."""
    if path.is_dir() and not any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir()):
        raise InputError(f"{path}: no checkpoint found to verify (no weight files)")
    report = VerifyReport(str(path), "unknown", [])
    try:
        with open_checkpoint(path) as source:
            report.format = source.info.format
            report.files = [p.name for p in source.info.files]
            report.num_tensors = len(source.specs)
            report.total_bytes = source.total_bytes
    except InputError as exc:
        report.problems.append(str(exc))
        return report
    zips = [p for p in source.info.files if detect_torch_format(p) == "torch-zip"]
    for path_ in zips:
        try:
            report.problems.extend(check_all_crcs(path_))
        except InputError as exc:
            report.problems.append(str(exc))
    if zips:
        # ``checksums`` stays about SHA-256 records quantkit wrote; the zip's own CRC-32s are a note
        report.notes.append("PyTorch zip: every record checked against the CRC-32 the zip records for it")
    else:
        report.notes.append("not safetensors: checked what can be checked without reading the tensor data")
    return report


def _read_index(index_path: Path, report: VerifyReport) -> tuple[dict[str, str] | None, dict, list[str]]:
    try:
        weight_map, metadata = parse_index(index_path)
    except InputError as exc:
        report.problems.append(str(exc))
        return None, {}, []
    return weight_map, metadata, list(dict.fromkeys(weight_map.values()))


def _read_headers(folder: Path, shard_names: list[str], report: VerifyReport) -> dict[str, SafetensorsHeader]:
    headers: dict[str, SafetensorsHeader] = {}
    for shard in shard_names:
        shard_path = folder / shard
        if "/" in shard or "\\" in shard or not shard_path.is_file():
            report.problems.append(f"{shard_path}: shard named by the index is missing")
            continue
        try:
            headers[shard] = read_header(shard_path)
        except InputError as exc:
            report.problems.append(str(exc))
        except OSError as exc:
            report.problems.append(f"{shard_path}: cannot read: {exc.strerror or exc}")
    return headers


def _check_coverage(where: Path, headers: dict[str, SafetensorsHeader], weight_map: dict[str, str] | None, report: VerifyReport) -> None:
    """Every weight_map entry is in its shard, every shard tensor is in the map, no name twice."""
    owner: dict[str, str] = {}
    for shard, header in headers.items():
        for name in header.entries:
            if name in owner:
                report.problems.append(f"{where}: tensor {name!r} is stored twice, in {owner[name]} and {shard}")
                continue
            owner[name] = shard
            if weight_map is not None and name not in weight_map:
                report.problems.append(f"{header.path}: tensor {name!r} is not in the index")
            elif weight_map is not None and weight_map[name] != shard:
                report.problems.append(f"{header.path}: tensor {name!r} is here but the index maps it to {weight_map[name]}")
    for name, shard in (weight_map or {}).items():
        if shard in headers and name not in headers[shard].entries:
            report.problems.append(f"{where}: the index maps tensor {name!r} to {shard}, which does not hold it")


def _check_aliases(headers: dict[str, SafetensorsHeader], report: VerifyReport) -> None:
    names = {n for h in headers.values() for n in h.entries}
    for header in headers.values():
        raw = header.metadata.get(ALIASES_KEY)
        if not raw:
            continue
        try:
            aliases = jsonio.loads(raw)
        except jsonio.BadJson:
            report.problems.append(f"{header.path}: metadata {ALIASES_KEY!r} is not JSON")
            continue
        if not isinstance(aliases, dict):
            report.problems.append(f"{header.path}: metadata {ALIASES_KEY!r} is not a mapping")
            continue
        for alias, kept in aliases.items():
            if kept not in names:
                report.problems.append(f"{header.path}: tied name {alias!r} points to {kept!r}, which no shard holds")


def _read_manifest(folder: Path, report: VerifyReport) -> dict:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return {}
    try:
        manifest = jsonio.loads(manifest_path.read_bytes())
    except jsonio.BadJson as exc:
        report.problems.append(f"{manifest_path}: not valid JSON ({exc.kind})")
        return {}
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        report.problems.append(f"{manifest_path}: 'files' must map file names to their bytes and sha256")
        return {}
    for name, entry in manifest["files"].items():
        if not _safe_relative(name):
            report.problems.append(f"{manifest_path}: file name {name!r} is not a path inside the folder (the record is damaged)")
        elif not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int) or not _is_sha256(entry.get("sha256")):
            report.problems.append(f"{manifest_path}: the record of {name!r} has no valid 'bytes' and 'sha256' (the record is damaged)")
    return manifest


def _safe_relative(name: object) -> bool:
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


def _check_index_records(index_path: Path | None, shard_names: list[str], index_meta: dict, report: VerifyReport) -> None:
    """The index's ``metadata.sha256``, where quantkit wrote one: a record for each shard, and
    none for anything else (a damaged name would otherwise leave its shard unchecked)."""
    if index_path is None:
        return
    sums = index_meta.get("sha256")
    if sums is None:
        if "quantkit_version" in index_meta and shard_names:
            report.problems.append(f"{index_path}: written by quantkit but has no metadata.sha256 (the record is damaged)")
        return
    if not isinstance(sums, dict):
        report.problems.append(f"{index_path}: metadata.sha256 must map shard names to SHA-256 digests")
        return
    for name, digest in sums.items():
        if name not in shard_names:
            report.problems.append(f"{index_path}: metadata.sha256 names {name!r}, which is not a shard of this checkpoint (the record is damaged)")
        elif not _is_sha256(digest):
            report.problems.append(f"{index_path}: metadata.sha256 of {name!r} is not a SHA-256 digest (the record is damaged)")
    for name in shard_names:
        if name not in sums:
            report.problems.append(f"{index_path}: metadata.sha256 has no record for {name}")


def _note_unlisted_files(folder: Path, manifest: dict, shard_names: list[str], report: VerifyReport) -> None:
    listed = set(manifest.get("files", {})) | set(shard_names) | {MANIFEST, ST_INDEX}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if (path.is_file() or path.is_symlink()) and rel not in listed and not rel.startswith("."):
            report.notes.append(f"{path}: not written by quantkit (not in {MANIFEST})")


def _check_total_size(source: Path, recorded: object, report: VerifyReport, *, strict: bool) -> None:
    if recorded is None or recorded == report.total_bytes:
        return
    message = f"{source}: total_size is {recorded} but the tensors hold {report.total_bytes} bytes"
    # Some writers (older transformers) count bool tensors as 1/8 byte: only quantkit's own
    # figures must agree exactly.
    (report.problems if strict else report.notes).append(message)


def _check_checksums(
    folder: Path, shard_names: list[str], manifest: dict, index_meta: dict, report: VerifyReport, headers: dict[str, SafetensorsHeader]
) -> None:
    """Compare sizes and SHA-256 with quantkit.json, the index metadata and each shard's own
    header record (``quantkit.self_checksum_v2``, or version 1's ``quantkit.self_sha256``);
    each file is read once."""
    files = manifest.get("files", {}) if manifest else {}
    index_sums = index_meta.get("sha256") if isinstance(index_meta.get("sha256"), dict) else {}
    recorded: dict[str, list[tuple[str, str]]] = {}
    for name, entry in files.items():
        if not _safe_relative(name):
            continue
        if not (folder / name).is_file():
            report.problems.append(f"{folder / name}: listed in {MANIFEST} but missing")
            continue
        if isinstance(entry, dict) and entry.get("bytes") is not None and entry["bytes"] != (folder / name).stat().st_size:
            report.problems.append(f"{folder / name}: {(folder / name).stat().st_size} bytes, {MANIFEST} records {entry['bytes']}")
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
            recorded.setdefault(name, []).append((MANIFEST, entry["sha256"]))
    for name, digest in index_sums.items():
        if isinstance(digest, str) and name in shard_names and (folder / name).is_file():
            recorded.setdefault(name, []).append(("the index", digest))
    if manifest:
        for shard in shard_names:
            if shard not in files:
                report.problems.append(f"{folder / shard}: shard not listed in {MANIFEST}")
    own = {name: header for name, header in headers.items() if _self_record(header, report)}
    if not recorded and not own:
        report.checksums = "not recorded"
        return
    mismatched = False
    for name in dict.fromkeys([*recorded, *own]):
        actual, own_actual = _digests(folder / name, own.get(name))
        mismatched |= compare_digests(str(folder / name), actual, own_actual, recorded.get(name, []), own.get(name), report)
    report.checksums = "mismatch" if mismatched else "verified"


def compare_digests(where: str, actual: str, own_actual: str | None, claims: list[tuple[str, str]],
                    header: SafetensorsHeader | None, report: VerifyReport) -> bool:
    """Report how file ``where``'s SHA-256 ``actual`` differs from the digests recorded for it
    (``claims``: who recorded it, digest) and from its header's own record (``own_actual``: the
    value the record should hold, "" when the record is not in the header exactly once, None
    when it has none); one line per damaged file. True when anything differs."""
    mismatched = False
    key = _record_key(header) if header is not None else SELF_SHA256_KEY
    for who, digest in claims:
        if digest.lower() != actual:
            mismatched = True
            report.problems.append(f"{where}: SHA-256 {actual[:16]}... differs from {who}'s {digest[:16]}... (file changed or damaged)")
    if own_actual == "":
        mismatched = True
        report.problems.append(f"{where}: header record {key!r} cannot be checked: not in the header exactly once (the record is damaged)")
    elif own_actual is not None and own_actual != header.metadata[key].lower():
        if not mismatched:
            report.problems.append(
                f"{where}: SHA-256 {own_actual[:16]}... differs from the {header.metadata[key][:16]}... its header records ({key}) (file changed or damaged)"
            )
        mismatched = True
    return mismatched


def _record_key(header: SafetensorsHeader) -> str:
    return SELF_CHECKSUM_V2_KEY if SELF_CHECKSUM_V2_KEY in header.metadata else SELF_SHA256_KEY


def _self_record(header: SafetensorsHeader, report: VerifyReport) -> bool:
    """Whether the shard carries its own record (either version); a damaged record is a
    problem, not a pass."""
    known = (SELF_CHECKSUM_V2_KEY, SELF_SHA256_KEY)
    present = [key for key in known if key in header.metadata]
    if not present:
        for key, other in header.metadata.items():
            if _is_sha256(other) and key.startswith("quantkit"):
                report.problems.append(f"{header.path}: metadata key {key!r} holds a SHA-256 but is not {SELF_CHECKSUM_V2_KEY!r} (the record is damaged)")
        return False
    if len(present) > 1:
        report.problems.append(f"{header.path}: metadata holds both {SELF_CHECKSUM_V2_KEY!r} and {SELF_SHA256_KEY!r} (the record is damaged)")
        return False
    if not _is_sha256(header.metadata[present[0]]):
        report.problems.append(f"{header.path}: metadata {present[0]!r} is not a SHA-256 digest (the record is damaged)")
        return False
    return True


def _digests(path: Path, header: SafetensorsHeader | None) -> tuple[str, str | None]:
    """SHA-256 of the file, and (for a shard carrying its own record) the value that record
    should hold, "" when it is not in the header exactly once; one read."""
    return file_digests(path, header) if header is not None else (sha256_of(path), None)
