"""Plain-text renderings of library results for the terminal."""

from __future__ import annotations

from quantkit.anatomy import Anatomy
from quantkit.sizes import format_bytes


def anatomy_text(a: Anatomy) -> str:
    lines = [
        f"{a.path}  ({a.format})",
        "files: " + ", ".join(f"{n} ({format_bytes(b)})" for n, b in a.files.items()),
        f"tensors: {a.num_tensors}   parameters: {a.num_parameters:,}   tensor data: {format_bytes(a.total_bytes)}",
        "by dtype: " + ", ".join(f"{d} {format_bytes(b)}" for d, b in a.bytes_by_dtype.items()),
        "",
        f"{'group':<13}{'parameters':>15}{'share':>8}{'bytes':>13}{'share':>8}",
    ]
    for name, g in sorted(a.groups.items(), key=lambda kv: -kv[1].bytes):
        lines.append(f"{name:<13}{g.num_parameters:>15,}{g.parameter_share:>8.1%}{format_bytes(g.bytes):>13}{g.byte_share:>8.1%}")
    lines += ["", "largest tensors:"]
    for row in a.largest:
        lines.append(f"  {row.name:<50} {row.dtype:<9} {str(row.shape):<18} {format_bytes(row.bytes):>11}  {row.group}")
    if a.quantization:
        lines += ["", "quantization: " + ", ".join(f"{k}={v}" for k, v in a.quantization.items())]
    if a.tied:
        lines += ["", "tied (saved once): " + ", ".join(f"{d} -> {k}" for d, k in a.tied.items())]
    if a.extras:
        lines += ["", "also in the file:"] + [f"  {k}: {v}" for k, v in a.extras.items()]
    lines += memory_lines(a.memory)
    lines += [f"note: {n}" for n in a.notes]
    if a.bytes_fetched is not None:
        lines.append(f"fetched: {a.bytes_fetched:,} bytes over the network ({a.bytes_fetched / max(sum(a.files.values()), 1):.4%} of the files)")
    return "\n".join(lines)


def memory_lines(m: dict | None) -> list[str]:
    """The memory estimate of ``Anatomy.memory`` (keys of quantkit.memory.MemoryEstimate)."""
    if not m:
        return []
    t = m["training"]
    lines = [
        "",
        "memory estimate: weights " + ", ".join(f"{k} {format_bytes(v)}" for k, v in m["weights_bytes"].items()),
        f"  training, mixed precision ({t['weight_bytes_per_parameter']}+{t['gradient_bytes_per_parameter']}+"
        f"{t['optimizer_bytes_per_parameter']} = {t['bytes_per_parameter']} bytes/param): {format_bytes(t['model_states_bytes'])}",
    ]
    if act := m["activations"]:
        lines.append(f"  + activations (batch {act['batch_size']}, seq {act['seq_len']}): {format_bytes(act['bytes'])}"
                     f" = {format_bytes(m['training_total_bytes'])}")
    if m["gpus_needed"]:
        lines.append(f"  GPUs of {m['gpu_memory_bytes'] / 2**30:g} GiB: " + ", ".join(f"{k} {v}" for k, v in m["gpus_needed"].items()))
    return lines + [f"  note: {n}" for n in m["notes"]]
