"""`quantkit profile` in-process: outputs, the reused profile file, targets, errors and exit codes."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
import torch
from typer.testing import CliRunner

from quantkit.plan import apply_rules
from quantkit_cli.main import app
from report_helpers import save, tiny_state_dict

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save(tiny_state_dict(), tmp_path_factory.mktemp("cli-profile") / "model.safetensors")


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_json_html_and_profile_file(model, tmp_path):
    out, page = tmp_path / "p.json", tmp_path / "p.html"
    result = run("profile", model, "--schemes", "int8,nf4", "--json", "-o", out, "--html", page, "-q")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["profile_version"] == 2 and printed["schemes"] == ["int8", "nf4"]
    assert len(printed["tensors"]) == 12 and set(printed["tensors"][0]["candidates"]) == {"keep", "int8", "nf4"}
    html = page.read_text()
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        ET.fromstring(svg)  # well-formed
    assert html.count("<polyline") >= 2  # one line per scheme across the two layers


def test_text_table_and_target_choice_with_rules(model, tmp_path):
    result = run("profile", model, "-q", "--target-bits", "12", "--family", "bitsandbytes")
    assert result.exit_code == 0, result.output
    assert "uniform" in result.stdout and "nf4" in result.stdout
    rules = re.findall(r"--rule '(.*)'", result.stdout)
    assert rules and "predicted:" in result.stdout
    names = [n for n in tiny_state_dict() if n.endswith("proj.weight")]
    chosen = {apply_rules(rules, n) for n in names}
    assert None not in chosen and len(chosen - {"keep"}) == 1  # bitsandbytes: one method


def test_reused_profile_is_refused_for_a_changed_checkpoint(model, tmp_path):
    out = tmp_path / "p.json"
    assert run("profile", model, "--schemes", "int8", "-o", out, "-q").exit_code == 0
    again = run("profile", model, "--profile", out, "--target-bits", "16", "--family", "bitsandbytes")
    assert again.exit_code == 0, again.output
    other = save(tiny_state_dict() | {"extra.weight": torch.ones(4, 4)}, tmp_path / "other.safetensors")
    refused = run("profile", other, "--profile", out)
    assert refused.exit_code == 3
    assert "run quantkit profile again" in refused.stderr and "Traceback" not in refused.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--schemes", "fp16"), 2, "not a quantizing scheme or bf16"),
        (("--schemes", "int3"), 2, "unknown scheme 'int3'"),
        (("--target-bits", "1"), 2, "below the smallest achievable"),
        (("--target-bits", "4", "--min-sqnr", "20"), 2, "exactly one target"),
        (("--family", "bitsandbytes"), 2, "--family goes with a target"),
        (("--schemes", "int8", "--target-bits", "8", "--family", "compressed-tensors"), 2, "no compressed-tensors scheme"),
    ],
)
def test_errors_are_one_line_with_exit_codes(model, args, code, message):
    result = run("profile", model, "-q", *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
