"""Every option of every command, given boundary and wrong values: exit 0 or 2, never a traceback.

The command's work is replaced by a recorder, so what is tested is the way from the command line to
the validated options model (a value the model accepts would otherwise start real training or
timing). An exit code of 2 must come with one line on stderr that names the option.
"""

from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path
from typing import get_args

import pytest

from blockserve import cli
from pruning.core.options import _members, options_of

ROOT = Path(__file__).resolve().parents[2]
VALUES = ("0", "-1", "1", "1000000000000", "abc", "/no/such/file.json")


@pytest.fixture(scope="module")
def files(tmp_path_factory, dense_bert_dir):
    root = tmp_path_factory.mktemp("cli-options")
    data = root / "data.json"
    data.write_text("{}")
    return {
        "dir": str(dense_bert_dir),
        "file": str(data),
        "out": str(root / "out"),
        "config": str(ROOT / "deploy/serve.yaml"),
    }


def base_arguments(files) -> dict[str, list[str]]:
    """A valid command line for each command (and for each prune method), cheap because nothing runs."""
    d, f, o = files["dir"], files["file"], files["out"]
    return {
        "finetune": ["--model", d, "--train", f, "--out", o],
        "prune": ["--teacher", d, "--train", f, "--eval", f, "--out", o],
        "prune posttrain": ["--method", "posttrain", "--model", d, "--calib", f, "--speedup", "2", "--out", o],
        "latency": ["--arch", "bert-tiny"],
        "evaluate": ["--model", d, "--data", f],
        "serve": [files["config"]],
        "kuberay": [files["config"], "--out", o],
        "init": ["--arch", "bert-tiny", "--corpus", f, "--out", o],
        "plan": ["--arch", "bert-tiny", "--keep-heads", "0.5", "--keep-ffn", "0.5", "--out", o],
        "compact": ["--model", d, "--plan", f, "--out", o],
        "export": ["--model", d, "--out", o],
        "bench": ["--arch", "bert-tiny"],
        "tune": ["--model", d],
        "loadtest": ["--url", "http://127.0.0.1:9"],
        "demo": [],
    }


def with_value(argv: list[str], option, value: str | None) -> list[str]:
    """`argv` with `option` set to `value` (replacing its value if present; None: a switch given alone)."""
    if option.positional:
        return [value, *argv[1:]]
    if option.flag in argv:
        index = argv.index(option.flag)
        argv = argv[:index] + argv[index + 2 :]
    return [*argv, option.flag] + ([] if value is None else [value])


def run(capsys, monkeypatch, name: str, argv: list[str]) -> tuple[int, str, list]:
    ran = []
    command = cli.BY_NAME[name]
    monkeypatch.setitem(cli.BY_NAME, name, dataclasses.replace(command, run=ran.append))
    try:
        code = cli.main([name, *argv])
    except SystemExit as exit_info:  # argparse: unknown flag, missing value
        code = exit_info.code
    except Exception:  # what the test exists to catch: it would reach a user as a traceback
        code, _ = -1, traceback.print_exc()
    return code, capsys.readouterr().err, ran


def method_of(model) -> str:
    return get_args(model.model_fields["method"].annotation)[0]


def cases(files):
    for key, argv in base_arguments(files).items():
        name, _, member = key.partition(" ")
        members = _members(cli.BY_NAME[name].options)
        model = members[0] if not member else next(m for m in members if method_of(m) == member)
        for option in options_of(model):
            for value in [None] if option.kind in ("bool", "switch") else VALUES:
                yield key, name, argv, option, value


def test_every_option_of_every_command_fails_cleanly_or_is_accepted(capsys, monkeypatch, files):
    checked, failures = 0, []
    for key, name, argv, option, value in cases(files):
        code, err, ran = run(capsys, monkeypatch, name, with_value(argv, option, value))
        checked += 1
        label = f"{key} {option.flag} {value!r}"
        if "Traceback" in err or code not in (0, 2):
            failures.append(f"{label}: exit {code}\n{err}")
        elif code == 2:
            last = err.strip().splitlines()[-1]
            own = f"blockserve {name}: error:" in last
            if own and len(err.strip().splitlines()) != 1:
                failures.append(f"{label}: more than one line: {err!r}")
            if option.flag not in last and not (option.positional and value in last):
                failures.append(f"{label}: the error does not name the option: {last!r}")
        elif len(ran) != 1:
            failures.append(f"{label}: exit 0 but the command did not run")
    assert checked > 500
    assert not failures, "\n".join(failures[:20]) + f"\n({len(failures)} failures)"


def test_every_command_is_covered(files):
    covered = {key.split()[0] for key in base_arguments(files)}
    assert covered == set(cli.BY_NAME), set(cli.BY_NAME) ^ covered


def test_the_base_command_lines_are_valid(capsys, monkeypatch, files):
    for key, argv in base_arguments(files).items():
        name = key.split()[0]
        code, err, ran = run(capsys, monkeypatch, name, argv)
        assert code == 0 and len(ran) == 1, f"{key}: {err}"
        assert isinstance(ran[0], tuple(_members(cli.BY_NAME[name].options)))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # The three cases the issue found: each was a traceback (or a crash after the slow phases).
        (["prune", "--teacher", "{dir}", "--train", "{file}", "--eval", "{file}", "--out", "{out}",
          "--target-density", "0"], "blockserve prune: error: --target-density 0: Input should be greater than 0"),
        (["finetune", "--model", "{dir}", "--train", "{file}", "--out", "{out}", "--warmup", "1"],
         "blockserve finetune: error: --warmup 1: Input should be less than 1"),
        (["prune", "--method", "posttrain", "--model", "{dir}", "--calib", "{file}", "--speedup", "2",
          "--out", "{out}", "--corrections", "-1"],
         "blockserve prune: error: --corrections -1: Input should be greater than or equal to 0"),
        # Rules across options come from the models, and name the flags.
        (["prune", "--method", "posttrain", "--model", "{dir}", "--calib", "{file}", "--out", "{out}"],
         "blockserve prune: error: give exactly one budget: --speedup or --latency-ms"),
        (["prune", "--teacher", "{dir}", "--out", "{out}"],
         "blockserve prune: error: --train is required; --eval is required"),
        (["prune", "--teacher", "{dir}", "--train", "{file}", "--eval", "{file}", "--out", "{out}", "--calib",
          "{file}"], "blockserve prune: error: --calib is not an option of --method movement"),
        (["prune", "--teacher", "{dir}", "--train", "{file}", "--eval", "{file}", "--out", "{out}",
          "--mask-warmup", "0.5", "--mask-hold", "0.5"], "--mask-warmup + --mask-hold (0.5 + 0.5) leave no steps"),
        (["kuberay", "{config}", "--min-workers", "3", "--max-workers", "2"],
         "blockserve kuberay: error: --max-workers (2) is below --min-workers (3)"),
        (["bench", "--arch", "bert-tiny", "--model", "{dir}"], "give exactly one of --model and --arch"),
        (["loadtest", "--url", "http://x", "--config", "{config}"], "give exactly one of --url"),
    ],
)  # fmt: skip
def test_documented_rules_end_in_one_line_naming_the_options(capsys, monkeypatch, files, argv, message):
    argv = [part.format(**files) for part in argv]
    code, err, ran = run(capsys, monkeypatch, argv[0], argv[1:])
    assert code == 2 and not ran
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_python_m_loadtests_takes_the_same_options(capsys):
    from loadtests.cli import main

    assert main(["--url", "http://127.0.0.1:9", "--duration", "0"]) == 2
    assert "loadtest: error: --duration 0: Input should be greater than 0" in capsys.readouterr().err


def test_every_flag_is_declared_once_per_command():
    """Two fields may not claim one flag within a command (the parser would silently drop one)."""
    for command in cli.COMMANDS:
        for member in _members(command.options):
            flags = [option.flag for option in options_of(member)]
            assert len(flags) == len(set(flags)), (command.name, sorted(f for f in flags if flags.count(f) > 1))
