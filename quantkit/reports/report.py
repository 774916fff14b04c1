"""The comparison report: a value built from two checkpoints, rendered elsewhere."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..anatomy import inspect_checkpoint
from ..errors import InputError, QuantkitError
from ..sources.renamed import KNOWN_PREFIXES
from ..memory import MemoryEstimate, ModelShape, estimate_memory, read_config
from ..sources import open_checkpoint
from ..sources.remote import is_url
from ..version import __version__
from .accuracy import TensorAccuracy, compare_tensors
from .outputs import OutputComparison, compare_module_outputs
from .size import SizeComparison, compare_sizes

REPORT_VERSION = 1


@dataclass
class ComparisonReport:
    """Everything `quantkit compare` found; ``to_dict`` is the JSON form (stable keys)."""

    original: str
    converted: str
    size: SizeComparison
    tensors: TensorAccuracy
    outputs: OutputComparison | None
    memory: MemoryEstimate
    notes: list[str] = field(default_factory=list)
    auto: dict | None = None  # convert --to auto: quantkit.json's ``auto`` (target, family, rules, predicted_*)
    report_version: int = REPORT_VERSION
    quantkit_version: str = __version__

    def to_dict(self) -> dict:
        """Plain JSON-able dict; infinite or NaN figures (an exact tensor's SQNR) become null.

        A tensor's ``nonfinite`` count stays out of report_version 1's keys: the notes name
        those tensors, and they lead ``tensors.worst``."""
        data = asdict(self)
        for row in [*data["tensors"]["worst"], *data["tensors"]["tensors"]]:
            row.pop("nonfinite", None)
        return _json_safe(data)


@dataclass(frozen=True)
class ReportOptions:
    """What a comparison report measures. ``model_outputs``: also run both models on sample
    inputs (Hugging Face folders with transformers installed, or ``model``); failures there
    become notes. ``text``: sample text (a ``Path`` is read as UTF-8); default: a built-in
    paragraph. ``model``, ``inputs``: ``"module:factory"`` building the ``nn.Module`` of a bare
    checkpoint, and ``"module:function"`` returning its inputs. ``device``: where the models
    run. ``top``: how many largest and worst tensors to list. ``gpu_gb`` (GiB), ``batch_size``,
    ``seq_len``, ``shape``: memory-estimate options (``estimate_memory``); ``shape`` defaults
    to the original's config.json. ``key``, ``strip_prefix``, ``allow_globals``: how the
    original is opened (``open_checkpoint``), e.g. a training checkpoint's DDP prefix."""

    model_outputs: bool = True
    text: str | Path | None = None
    model: str | None = None
    inputs: str | None = None
    device: str = "auto"
    max_tokens: int = 1024
    top: int = 10
    gpu_gb: float | None = None
    batch_size: int = 1
    seq_len: int | None = None
    shape: ModelShape | None = None
    key: str | None = None
    strip_prefix: str | None = None
    allow_globals: tuple[str, ...] = ()

    @property
    def original_options(self) -> dict:
        """``open_checkpoint`` keywords for the original (``key``, ``strip_prefix``, ``allow_globals``)."""
        return {"key": self.key, "strip_prefix": self.strip_prefix, "allow_globals": self.allow_globals}


def build_report(
    original: str | Path,
    converted: str | Path,
    options: ReportOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    **option_values,
) -> ComparisonReport:
    """Compare a converted checkpoint with its original: sizes, per-tensor error, outputs, memory.

    Args:
        original, converted: checkpoint files, indexes or folders (any format quantkit reads).
        options: what to measure (``ReportOptions``), or its fields as keywords
            (``model_outputs=False``, ``top=5``, ...).
        progress: called with the bytes of each original tensor compared.

    Example:
        >>> report = build_report("gpt2", "gpt2-nf4")  # doctest: +SKIP
        >>> write_report(report, "gpt2-nf4.html")  # doctest: +SKIP
    """
    o = options or ReportOptions(**option_values)
    original, converted = (str(p) if is_url(str(p)) else Path(p) for p in (original, converted))  # a URL stays a str
    with open_checkpoint(original, **o.original_options) as before, open_checkpoint(converted) as after:
        accuracy = compare_tensors(before, after, top=o.top, progress=progress)
        if not accuracy.tensors and not accuracy.mismatched:
            raise InputError(_nothing_shared(original, converted, before, after))
        config_dir = before.info.config_dir
        shape = o.shape or ModelShape.from_config(read_config(config_dir))  # a remote source's config goes with it
        anatomies = [replace(inspect_checkpoint(before, top=0), path=str(original)), inspect_checkpoint(converted, top=0)]
    size = compare_sizes(anatomies[0], anatomies[1], accuracy.tensors, top=o.top)
    notes = _accuracy_notes(accuracy)
    remote = [str(p) for p in (original, converted) if isinstance(p, str)]
    if remote and o.model_outputs:
        notes.append(f"model outputs not compared: {remote[0]} is remote (the models are loaded from local folders; download it to compare outputs)")
    outputs = _outputs(original, converted, config_dir, o, notes) if o.model_outputs and not remote else None
    memory = estimate_memory(
        size.original.num_parameters,
        shape=shape,
        batch_size=o.batch_size,
        seq_len=o.seq_len,
        gpu_gb=o.gpu_gb,
        stored_bytes=size.converted.tensor_bytes,
    )
    return ComparisonReport(str(original), str(converted), size, accuracy, outputs, memory, notes, auto=_auto_record(converted))


def _auto_record(converted: Path) -> dict | None:
    """The choice ``convert --to auto`` recorded in the converted folder's quantkit.json, if any."""
    import json

    from ..layout import MANIFEST

    path = converted / MANIFEST if isinstance(converted, Path) and converted.is_dir() else None
    if path is None or not path.is_file():
        return None
    try:
        auto = json.loads(path.read_text()).get("auto")
    except (OSError, ValueError, AttributeError):
        return None
    return auto if isinstance(auto, dict) else None


def _outputs(original, converted, config_dir, o: ReportOptions, notes) -> OutputComparison | None:
    model, device = o.model, o.device
    if model is not None:
        inputs = o.inputs
        if inputs is None:
            raise QuantkitError("--model needs --inputs module:function returning the model's sample inputs")
        try:
            return compare_module_outputs(original, converted, factory=model, inputs=inputs, device=device, original_options=o.original_options)
        except QuantkitError:
            raise
        except Exception as exc:  # the user's factory or model failed: say where, in one line
            raise QuantkitError(f"--model {model}: running it failed: {exc.__class__.__name__}: {exc}") from exc
    if config_dir is None:
        notes.append("model outputs not compared: the original is not a Hugging Face folder (use --model and --inputs)")
        return None
    if importlib.util.find_spec("transformers") is None:
        notes.append("model outputs not compared: transformers is not installed (pip install 'quantkit[hf]')")
        return None
    from .hf_outputs import compare_hf_outputs

    text = o.text.read_text(encoding="utf-8") if isinstance(o.text, Path) else o.text
    try:
        return compare_hf_outputs(config_dir, converted, text=text, device=device, max_tokens=o.max_tokens)
    except (QuantkitError, RuntimeError, ValueError, KeyError, AttributeError, TypeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        notes.append(f"model outputs not compared: {exc.__class__.__name__}: {reason[:300]}")
        return None


def _nothing_shared(original: Path, converted: Path, before, after) -> str:
    """The one line for two checkpoints with no tensor name in common, with a prefix hint."""
    first = lambda source: next(iter(source.specs), "-")  # noqa: E731
    hint = ""
    for prefix in KNOWN_PREFIXES:
        if any(n.removeprefix(prefix) in after.specs for n in before.specs if n.startswith(prefix)):
            hint = f"; the original's names start with {prefix!r}: pass --strip-prefix {prefix}"
            break
    return (f"{original} and {converted} share no tensor name (first: {first(before)!r} and {first(after)!r}): "
            f"nothing to compare{hint}")


def _accuracy_notes(accuracy: TensorAccuracy) -> list[str]:
    notes = []
    broken = [t for t in accuracy.tensors if t.nonfinite]
    if broken:
        shown = ", ".join(f"{t.name} ({t.nonfinite})" for t in broken[:5]) + (f", ... ({len(broken)} in all)" if len(broken) > 5 else "")
        notes.append(f"{len(broken)} tensor(s) hold NaN or inf values that are finite in the original (listed first among the worst): {shown}")
    for label, names in (
        ("in the original but not in the converted checkpoint", accuracy.missing),
        ("in the converted checkpoint but not in the original", accuracy.unexpected),
        ("not compared, shapes differ", accuracy.mismatched),
    ):
        if names:
            shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
            notes.append(f"{len(names)} tensor(s) {label}: {shown}")
    return notes


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
