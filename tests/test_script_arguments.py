"""The scripts refuse a count or a share that makes no sense when they parse their arguments, with argparse's usage
line, instead of failing deep inside the run or silently measuring nothing."""

import argparse
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from bcos_zoo.zoo.cli import at_least, fraction


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(script: str):
    spec = importlib.util.spec_from_file_location(f"{script}_script", SCRIPTS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(script: str):
    return load_script(script).parse_args


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("evaluate_model", ["--model", "m", "--grid-size", "0"], "--grid-size: must be at least 1, got 0"),
        ("evaluate_model", ["--model", "m", "--max-images", "0"], "--max-images: must be at least 1, got 0"),
        ("evaluate_model", ["--model", "m", "--batch-size", "-2"], "--batch-size: must be at least 1, got -2"),
        ("evaluate_model", ["--model", "m", "--min-confidence", "2"], "--min-confidence: must lie in [0, 1], got 2.0"),
        ("evaluate_model", ["--model", "m", "--road-fractions", "0.2", "1.5"], "--road-fractions: must lie in [0, 1]"),
        ("reproduce", ["--num-examples", "0"], "--num-examples: must be at least 1, got 0"),
        ("reproduce", ["--min-confidence", "-0.1"], "--min-confidence: must lie in [0, 1], got -0.1"),
        ("benchmark_faithfulness", ["--steps", "0"], "--steps: must be at least 1, got 0"),
        ("benchmark_faithfulness", ["--road-fractions", "9"], "--road-fractions: must lie in [0, 1], got 9.0"),
        ("port_bcos", ["--all", "x", "--check-images", "0"], "--check-images: must be at least 1, got 0"),
    ],
)
def test_a_meaningless_count_or_share_is_refused_with_the_usage_line(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(script)(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_counts_take_their_minimum_and_shares_their_bounds():
    assert at_least(0)("0") == 0 and at_least(1)("7") == 7
    assert fraction("0") == 0.0 and fraction("1") == 1.0 and fraction("0.25") == 0.25
    with pytest.raises(argparse.ArgumentTypeError):
        fraction("nan")
    with pytest.raises(ValueError):
        at_least(1)("2.5")  # argparse reports it as an invalid int value


def test_space_cards_help_prints_its_usage_and_rewrites_nothing(monkeypatch, capsys, tmp_path):
    module = load_script("space_cards")
    monkeypatch.setattr(module, "SPACES_DIR", tmp_path)  # a run would fail here: no Space folders to rewrite
    monkeypatch.setattr("sys.argv", ["space_cards.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    assert "usage: space_cards.py" in capsys.readouterr().out


@pytest.mark.subprocess
@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), ([], 2)])
def test_the_timing_process_explains_itself_without_a_spec(argv, code):
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "timing.py"), *argv], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == code, result.stderr
    assert 'python scripts/timing.py \'{"task": "compare"' in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "vit", "--memory-models", "--image-size", "40"], "multiple of 16 for vit"),
        (["--models", "--memory-models", "clip", "--image-size", "48"], "multiple of 32 for clip"),
        (["--models", "vit", "--device", "gpu"], "expected cpu, cuda or cuda:<index>, got 'gpu'"),
    ],
)
def test_the_benchmark_refuses_settings_it_cannot_time_before_building_a_model(argv, message, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["benchmark.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        load_script("benchmark").main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("script", ["benchmark", "benchmark_cnn"])
def test_a_csv_file_of_other_columns_is_refused_before_the_timing(script, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n1,2,3\n")
    monkeypatch.setattr("sys.argv", [f"{script}.py", "--models", "--memory-models", "--csv", str(other)])
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main()
    assert exit_info.value.code == 2 and "has other columns than this benchmark writes" in capsys.readouterr().err


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file"),
        ("a,b\n1,2\n", "is not a benchmark CSV"),
        ("model,device,dtype,compile,fast_paths\n", "holds no runs"),
    ],
    ids=["missing", "other-columns", "header-only"],
)
def test_plot_speed_ends_in_one_line_on_a_csv_it_cannot_plot(content, message, tmp_path):
    path = tmp_path / "speed.csv"
    if content is not None:
        path.write_text(content)
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "plot_speed.py"), str(path)], capture_output=True, text=True, timeout=120
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and message in lines[0], result.stderr


class _Parsed(Exception):
    """Raised in place of parsing: the test has the parser it wanted."""


# timing.py is the benchmarks' timing process, started with a spec file; it refuses to run where bcos_zoo is imported
@pytest.mark.parametrize("script", sorted(path.stem for path in SCRIPTS.glob("*.py") if path.stem != "timing"))
def test_every_flag_of_every_script_says_what_it_means(script, monkeypatch):
    parsers = []

    def capture(parser, *args, **kwargs):
        parsers.append(parser)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    monkeypatch.setattr(sys, "argv", [script])
    module = load_script(script)
    main = module.main
    with pytest.raises(_Parsed):
        main() if not inspect.signature(main).parameters else main([])
    silent = [action.dest for action in parsers[0]._actions if not action.help]
    assert silent == [], f"{script}: flags without help: {silent}"
