"""Issue 11, first use: --help, flags, case-insensitive schemes, options that do nothing,
bad regexes, a closed stdout, --key / --strip-prefix / --allow-global, --only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import quantkit
from bad_files import BAD_COMPARES, _lightning_with_path, build
from quantkit.errors import UsageError

COMMANDS = ["inspect", "convert", "reshard", "compare", "profile", "verify"]


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _linear_sd(seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}0.weight": torch.randn(16, 32, generator=g),
        f"{prefix}0.bias": torch.randn(16, generator=g),
        f"{prefix}lm_head.weight": torch.randn(8, 16, generator=g),
    }


def test_help_lists_commands_in_the_order_a_user_needs(cli):
    result = cli("-h")
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_dash_h_works_everywhere_and_flags_show_as_flags(cli, command):
    result = cli(command, "-h")
    assert result.exit_code == 0, result.stderr
    assert "<bool>" not in result.stdout
    assert "-h, --help" in result.stdout


def test_max_size_default_is_shown_as_a_size(cli):
    for command in ("convert", "reshard"):
        assert "[default: 2GB]" in " ".join(cli(command, "-h").stdout.split())  # however the help wraps


def test_scheme_names_are_case_insensitive(cli, small_pth, tmp_path):
    result = cli("convert", small_pth, "--to", "BF16", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"wrote {tmp_path / 'out'} (bf16, ")
    assert quantkit.ConvertOptions("NF4").scheme == "nf4"


@pytest.mark.parametrize(("args", "flags"), [
    (["--to", "bf16", "--blocksize", "32"], ["--blocksize"]),
    (["--to", "fp16", "--double-quant", "--rest-dtype", "bf16"], ["--double-quant", "--rest-dtype"]),
    (["--to", "int8", "--blocksize", "128"], ["--blocksize"]),
])
def test_options_that_do_nothing_for_the_scheme_say_so(cli, small_pth, tmp_path, args, flags):
    result = cli("convert", small_pth, *args, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    scheme = args[1]
    assert result.stderr.splitlines() == [f"quantkit: warning: {flag} does nothing for {scheme}" for flag in flags]


def test_options_the_scheme_uses_give_no_warning(cli, small_pth, tmp_path):
    result = cli("convert", small_pth, "--to", "nf4", "--blocksize", "128", "--double-quant", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("flag", ["--skip", "--only"])
def test_bad_regex_is_a_usage_error(cli, small_pth, tmp_path, flag):
    result = cli("convert", small_pth, "--to", "int8", flag, "(", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (f"quantkit: error: {flag} '(' is not a regular expression (missing ), unterminated subpattern "
                             "at position 0): escape special characters with a backslash\n")
    assert not (tmp_path / "out").exists()


def test_bad_regex_from_the_python_api_is_a_quantkit_error():
    with pytest.raises(UsageError, match=r"^--skip '\(' is not a regular expression"):
        quantkit.ConvertOptions("int8", skip=("(",))
    assert issubclass(UsageError, quantkit.QuantkitError)


def test_closed_stdout_exits_quietly_with_141(small_pth):
    # a real pipe whose reader has gone, as in `quantkit inspect x | true`
    code = "from quantkit_cli.main import run; run()"
    proc = subprocess.Popen([sys.executable, "-c", code, "inspect", str(small_pth)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert stderr == ""


@pytest.mark.slow  # the same path through a shell; test_closed_stdout_exits_quietly_with_141 stays fast
def test_shell_pipe_to_true_leaves_no_traceback(small_pth):
    quantkit_bin = Path(sys.executable).parent / "quantkit"
    done = subprocess.run(f"'{quantkit_bin}' inspect '{small_pth}' | true; echo \"${{PIPESTATUS[0]}}\"",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert done.stdout.strip() in ("0", "141")  # 0 when inspect finished writing before `true` exited


def test_strip_prefix_and_key_on_every_reading_command(cli, tmp_path):
    ckpt = _save(tmp_path / "train.pth", {"model": _linear_sd(prefix="module."), "ema": {"x": torch.zeros(2)}, "epoch": 3})
    opts = ["--key", "model", "--strip-prefix", "module."]
    inspected = json.loads(cli("inspect", ckpt, *opts, "--json").stdout)
    assert inspected["num_tensors"] == 3
    result = cli("convert", ckpt, "--to", "int8", *opts, "-o", tmp_path / "int8", "-q", "--json")
    assert result.exit_code == 0, result.stderr
    assert set(json.loads(result.stdout)["kept"]) == {"0.bias", "lm_head.weight"}
    assert cli("reshard", ckpt, *opts, "-o", tmp_path / "st", "-q").exit_code == 0
    assert set(quantkit.load_state_dict(tmp_path / "st")) == {"0.weight", "0.bias", "lm_head.weight"}
    compared = cli("compare", ckpt, tmp_path / "int8", *opts, "--json", "-q", "--no-outputs")
    assert compared.exit_code == 0, compared.stderr
    assert len(json.loads(compared.stdout)["tensors"]["tensors"]) == 3


def test_allow_global_opens_a_lightning_checkpoint(cli, tmp_path):
    ckpt = _lightning_with_path(tmp_path)
    refused = cli("inspect", ckpt)
    assert refused.exit_code == 4
    assert "(CLI: --allow-global pathlib.PosixPath)" in refused.stderr
    result = cli("convert", ckpt, "--to", "bf16", "--allow-global", "pathlib.PosixPath", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr


def test_allow_global_outside_the_list_is_a_usage_error(cli, tmp_path):
    ckpt = _lightning_with_path(tmp_path)
    result = cli("inspect", ckpt, "--allow-global", "os.system")
    assert result.exit_code == 2
    assert result.stderr.startswith("quantkit: error: allow_globals: os.system not in quantkit's list of harmless globals")


def test_compare_names_that_do_not_match_the_model_is_one_line_with_the_prefix(cli, tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch\n"
        "def build():\n    return torch.nn.Sequential(torch.nn.Linear(32, 16))\n"
        "def inputs():\n    return torch.ones(2, 32)\n"
    )
    sd = _linear_sd(prefix="module.")
    del sd["module.lm_head.weight"]
    ckpt = _save(tmp_path / "ddp.pth", sd)
    model = ["--model", f"{tmp_path / 'net.py'}:build", "--inputs", f"{tmp_path / 'net.py'}:inputs"]
    assert cli("convert", ckpt, "--to", "bf16", "-o", tmp_path / "same", "-q").exit_code == 0
    assert cli("convert", ckpt, "--to", "bf16", "-o", tmp_path / "plain", "-q", "--strip-prefix", "module.").exit_code == 0
    result = cli("compare", ckpt, tmp_path / "same", *model, "-q")
    assert result.exit_code == 3
    assert result.stderr == (
        f"quantkit: error: {ckpt}: 2 of the model's names are not in the checkpoint (first: 0.bias); "
        "2 of its names are not in the model (first: module.0.bias); the checkpoint's names start with 'module.': "
        "strip it with strip_prefix='module.' (CLI: --strip-prefix module.)\n"
    )
    fixed = cli("compare", ckpt, tmp_path / "plain", *model, "-q", "--strip-prefix", "module.", "--json")
    assert fixed.exit_code == 0, fixed.stderr
    assert json.loads(fixed.stdout)["outputs"]["kind"] == "generic"


def test_compare_of_checkpoints_sharing_no_name_is_an_error(cli, tmp_path):
    a = _save(tmp_path / "a.pth", _linear_sd(prefix="module."))
    b = _save(tmp_path / "b.pth", _linear_sd())
    result = cli("compare", a, b, "-q", "--no-outputs")
    assert result.exit_code == 3
    assert result.stderr == (
        f"quantkit: error: {a} and {b} share no tensor name (first: 'module.0.weight' and '0.weight'): "
        "nothing to compare; the original's names start with 'module.': pass --strip-prefix module.\n"
    )


def test_only_quantizes_a_weight_the_defaults_keep(cli, tmp_path):
    ckpt = _save(tmp_path / "m.pth", _linear_sd())
    default = json.loads(cli("convert", ckpt, "--to", "int8", "-o", tmp_path / "d", "-q", "--json").stdout)
    assert default["kept"]["lm_head.weight"] == "output head"
    forced = json.loads(cli("convert", ckpt, "--to", "int8", "--only", "lm_head", "-o", tmp_path / "f", "-q", "--json").stdout)
    assert "lm_head.weight" not in forced["kept"] and forced["num_quantized"] == 1
    assert "lm_head.SCB" in quantkit.load_state_dict(tmp_path / "f", dequantize=False)


def test_only_on_a_tied_weight_says_why_it_stays(cli, tmp_path):
    sd = _linear_sd()
    sd["embed.weight"] = sd["lm_head.weight"]  # tied: stored once
    ckpt = _save(tmp_path / "m.pth", sd)
    result = cli("convert", ckpt, "--to", "int8", "--only", "embed|lm_head|0\\.bias", "-o", tmp_path / "o", "-q")
    assert result.exit_code == 0, result.stderr
    assert ("note: --only matches tensors that stay unquantized: 0.bias (bias or norm), embed.weight (tied weights); "
            "only 2-D .weight tensors not tied to another name can be quantized") in result.stdout


@pytest.mark.parametrize(("bad", "extra"), BAD_COMPARES, ids=[b.id for b, _ in BAD_COMPARES])
def test_bad_compare_pairs_give_one_line_and_write_nothing(cli, tmp_path, bad, extra):
    original, _ = build(bad, tmp_path / "in")
    report = tmp_path / "report.html"
    args = [a.format(folder=tmp_path / "in") for a in extra]
    result = cli("compare", original, tmp_path / "in" / "converted.pth", *args, "-q", "--html", report)
    assert result.exit_code == bad.exit_code
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"quantkit: error: {original}") and bad.fragment in lines[0]
    assert not report.exists()


def test_convert_report_opens_the_source_as_convert_did(cli, tmp_path):
    ckpt = _save(tmp_path / "ddp.pth", _linear_sd(prefix="module."))
    report = tmp_path / "report.json"
    result = cli("convert", ckpt, "--to", "int8", "--strip-prefix", "module.", "-o", tmp_path / "o", "-q", "--report", report)
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(report.read_text())["tensors"]["tensors"]) == 3
