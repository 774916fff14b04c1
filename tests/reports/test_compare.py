"""build_report on small checkpoints: sizes agree with the disk, per-tensor figures, renderings, the CLI."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest
import torch
from typer.testing import CliRunner

from quantkit.errors import QuantkitError, UsageError
from quantkit.reports import build_report, render_html, render_json, render_markdown, render_text, write_report
from quantkit_cli.main import app
from report_helpers import HIDDEN, cast_floats, save, tiny_state_dict, with_noise

NOISY = "model.layers.1.mlp.up_proj.weight"
TOP_KEYS = {"original", "converted", "size", "tensors", "outputs", "memory", "notes", "auto", "report_version", "quantkit_version"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """An original float32 checkpoint; a BF16 copy with one tensor given 25 dB noise instead."""
    root = tmp_path_factory.mktemp("pair")
    sd = tiny_state_dict()
    converted = cast_floats(sd, torch.bfloat16)
    converted[NOISY] = with_noise(sd[NOISY], 25.0).to(torch.bfloat16)
    return save(sd, root / "orig.safetensors"), save(converted, root / "bf16.safetensors")


@pytest.fixture(scope="module")
def report(pair):
    return build_report(*pair, model_outputs=False, top=5)


def test_sizes_agree_with_files_on_disk(pair, report):
    original, converted = pair
    s = report.size
    assert s.original.file_bytes == original.stat().st_size
    assert s.converted.file_bytes == converted.stat().st_size
    tensor_bytes = sum(v.nbytes for v in tiny_state_dict().values())
    assert s.original.tensor_bytes == tensor_bytes
    position_ids = 8 * 8
    assert s.converted.tensor_bytes == (tensor_bytes - position_ids) // 2 + position_ids
    assert s.tensor_ratio == pytest.approx(s.converted.tensor_bytes / tensor_bytes)
    assert s.saved_bytes == original.stat().st_size - converted.stat().st_size
    assert s.original.bits_per_weight == pytest.approx(32 * tensor_bytes / (s.original.num_parameters * 4))
    assert s.converted.bytes_by_dtype == {"bfloat16": (tensor_bytes - position_ids) // 2, "int64": position_ids}
    assert sum(g.original_bytes for g in s.groups.values()) == tensor_bytes
    assert s.groups["mlp"].ratio == pytest.approx(0.5)
    assert s.largest[0].name in ("model.embed_tokens.weight", "lm_head.weight")
    assert s.largest[0].stored_bytes == s.largest[0].original_bytes // 2


def test_per_tensor_figures(report):
    a = report.tensors
    rows = {r.name: r for r in a.tensors}
    assert len(rows) == len(tiny_state_dict())
    assert a.worst[0].name == NOISY
    assert rows[NOISY].sqnr_db == pytest.approx(25.0, abs=0.3)  # bf16 rounding adds a little
    cast_only = rows["model.layers.0.mlp.up_proj.weight"]
    assert 45 < cast_only.sqnr_db < 60 and cast_only.cosine > 0.99999 and cast_only.stored_dtype == "bfloat16"
    assert rows["model.position_ids"].sqnr_db == math.inf  # integers are kept: exact
    assert rows["model.norm.weight"].rel_l2 == 0.0  # ones are exact in bf16
    assert a.by_group["mlp"].worst_tensor == NOISY
    assert a.by_group["mlp"].min_sqnr_db == rows[NOISY].sqnr_db
    assert list(a.by_layer) == ["model.layers.0", "model.layers.1"]
    assert a.by_layer["model.layers.1"].sqnr_db < a.by_layer["model.layers.0"].sqnr_db
    assert a.overall.num_tensors == len(rows) - 1  # the int64 buffer stays out of the pooled figures
    assert not (a.missing or a.unexpected or a.mismatched)


def test_identical_copy_is_exact(pair, tmp_path):
    copy = save(tiny_state_dict(), tmp_path / "copy.safetensors")
    r = build_report(pair[0], copy, model_outputs=False)
    assert r.tensors.overall.sqnr_db == math.inf and r.tensors.overall.cosine == 1.0
    assert r.to_dict()["tensors"]["overall"]["sqnr_db"] is None  # JSON has no infinity
    assert "exact" in render_text(r)


def test_missing_unexpected_and_mismatched_are_noted(pair, tmp_path):
    sd = tiny_state_dict()
    del sd["lm_head.weight"]
    sd["extra.weight"] = torch.zeros(2)
    sd["model.norm.weight"] = torch.ones(HIDDEN + 1)
    r = build_report(pair[0], save(sd, tmp_path / "odd.safetensors"), model_outputs=False)
    assert r.tensors.missing == ["lm_head.weight"]
    assert r.tensors.unexpected == ["extra.weight"]
    assert r.tensors.mismatched == [f"model.norm.weight: [{HIDDEN}] -> [{HIDDEN + 1}]"]
    assert len(r.notes) == 3


def test_quantized_checkpoint_is_dequantized_and_counted(tmp_path):
    from quantkit.convert import ConvertOptions, convert

    sd = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(64, 64) for i in range(2)}
    sd["model.embed_tokens.weight"] = torch.randn(32, 64)
    original = save(sd, tmp_path / "orig" / "model.safetensors")
    out = convert(original, tmp_path / "int8", options=ConvertOptions(scheme="int8", device="cpu"))
    r = build_report(original, out.write.folder, model_outputs=False)
    rows = {row.name: row for row in r.tensors.tensors}
    q = rows["model.layers.0.mlp.up_proj.weight"]
    assert q.quantized and q.stored_dtype == "int8"
    assert q.stored_bytes == 64 * 64 + 64 * 4 + 1  # codes, row scales, format byte
    assert 30 < q.sqnr_db < 50  # 8 bits, row-wise absmax
    assert not rows["model.embed_tokens.weight"].quantized and rows["model.embed_tokens.weight"].sqnr_db == math.inf
    assert r.size.converted.num_parameters == r.size.original.num_parameters
    assert 8 < r.size.converted.bits_per_weight < 32


def test_json_is_strict_and_has_stable_keys(report):
    data = json.loads(render_json(report))
    assert set(data) == TOP_KEYS
    assert set(data["size"]) == {"original", "converted", "tensor_ratio", "file_ratio", "saved_bytes", "groups", "largest"}
    assert set(data["size"]["original"]) == {"path", "format", "files", "file_bytes", "tensor_bytes", "num_tensors",
                                             "num_parameters", "bits_per_weight", "bytes_by_dtype", "quantization"}
    assert set(data["size"]["groups"]["mlp"]) == {"original_bytes", "converted_bytes", "ratio", "original_share", "converted_share", "num_parameters"}
    assert set(data["tensors"]) == {"overall", "by_group", "by_layer", "worst", "tensors", "missing", "unexpected", "mismatched"}
    assert set(data["tensors"]["overall"]) == {"num_tensors", "num_elements", "rel_l2", "max_abs", "cosine", "sqnr_db", "min_sqnr_db", "worst_tensor"}
    assert set(data["tensors"]["worst"][0]) == {"name", "group", "layer", "shape", "original_dtype", "stored_dtype", "original_bytes",
                                                "stored_bytes", "quantized", "rel_l2", "max_abs", "cosine", "sqnr_db"}
    assert data["outputs"] is None and data["report_version"] == 1
    assert len(data["tensors"]["worst"]) == 5


def test_text_and_markdown_structure(report):
    text = render_text(report)
    for needle in ("original ", "converted ", "bits/weight", "group", "largest tensors:", "worst tensors", NOISY, "memory (N ="):
        assert needle in text
    md = render_markdown(report)
    tables = [line for line in md.splitlines() if line.startswith("|---")]
    assert len(tables) >= 5  # sizes, groups, accuracy, worst, memory
    header_cells = {line.count("|") for line in md.splitlines() if line.startswith("| group | original")}
    assert header_cells == {7}
    assert "## Conversion report" in md and "### Tensor accuracy" in md


def test_html_is_self_contained_with_valid_svg_charts(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<link" not in page
    svgs = [page[i : page.index("</svg>", i) + 6] for i in range(len(page)) if page.startswith("<svg", i)]
    assert len(svgs) == 3  # size by group, SQNR along the depth, worst tensors
    for svg in svgs:
        root = ET.fromstring(svg)  # well-formed XML
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert ET.fromstring(svgs[1]).findall(".//{http://www.w3.org/2000/svg}polyline")
    assert len(ET.fromstring(svgs[0]).findall(".//{http://www.w3.org/2000/svg}rect")) >= 2 * len(report.size.groups)


@pytest.mark.parametrize("suffix, starts", [(".json", "{"), (".md", "## Conversion report"), (".html", "<!DOCTYPE html>")])
def test_write_report_by_suffix(report, tmp_path, suffix, starts):
    path = write_report(report, tmp_path / f"r{suffix}")
    assert path.read_text(encoding="utf-8").startswith(starts)


def test_write_report_rejects_unknown_suffix(report, tmp_path):
    with pytest.raises(UsageError, match=r"\.json, \.md or \.html"):
        write_report(report, tmp_path / "r.txt")


def test_module_factory_outputs(tmp_path):
    factory = tmp_path / "netdef.py"
    factory.write_text(
        "import torch\n"
        "def build():\n    torch.manual_seed(0)\n    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))\n"
        "def inputs():\n    return torch.randn(5, 8, generator=torch.Generator().manual_seed(1))\n"
    )
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    torch.save(net.state_dict(), tmp_path / "net.pth")
    torch.save({k: v.to(torch.bfloat16) for k, v in net.state_dict().items()}, tmp_path / "net-bf16.pth")
    r = build_report(tmp_path / "net.pth", tmp_path / "net-bf16.pth", model=f"{factory}:build", inputs=f"{factory}:inputs", device="cpu")
    o = r.outputs
    assert o.kind == "generic" and o.num_samples == 5
    assert 0 < o.metrics["relative_error"] < 0.02 and o.metrics["cosine"] > 0.999
    with pytest.raises(QuantkitError, match="--model needs --inputs"):
        build_report(tmp_path / "net.pth", tmp_path / "net-bf16.pth", model=f"{factory}:build")
    with pytest.raises(UsageError, match="cannot import"):
        build_report(tmp_path / "net.pth", tmp_path / "net-bf16.pth", model=f"{factory}:nope", inputs=f"{factory}:inputs")


def test_cli_compare(pair, tmp_path):
    runner = CliRunner()
    md, html = tmp_path / "r.md", tmp_path / "r.html"
    result = runner.invoke(app, ["compare", *map(str, pair), "--markdown", str(md), "--html", str(html), "-q", "--gpu-gb", "24"])
    assert result.exit_code == 0, result.output
    assert "worst tensors" in result.stdout and f"wrote {md}" in result.stdout
    assert md.read_text().startswith("## Conversion report") and "<svg" in html.read_text()
    as_json = runner.invoke(app, ["compare", *map(str, pair), "--json", "--top", "3"])
    data = json.loads(as_json.stdout)
    assert len(data["tensors"]["worst"]) == 3 and data["tensors"]["worst"][0]["name"] == NOISY
    assert data["memory"]["gpus_needed"] is None


def test_cli_compare_errors(pair, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["compare", str(pair[0]), str(tmp_path / "nope")])
    assert missing.exit_code == 3 and "no such file" in missing.output
    bad_text = runner.invoke(app, ["compare", *map(str, pair), "--text", str(tmp_path / "none.txt")])
    assert bad_text.exit_code == 2 and "--text" in bad_text.output
    shape = runner.invoke(app, ["compare", *map(str, pair), "--num-layers", "2"])
    assert shape.exit_code == 2 and "go together" in shape.output
    flags = runner.invoke(app, ["compare", *map(str, pair), "--json", "--num-layers", "2", "--hidden-size", "16", "--num-heads", "4", "--seq-len", "8"])
    assert json.loads(flags.stdout)["memory"]["activations"]["seq_len"] == 8
