"""A recipe's bool fields as flags of scripts/finetune.py: true and false spelled out, a bare flag is true, and a typo
is refused instead of being read as false."""

import sys

import pytest
from training_testing import REPO


sys.path.insert(0, str(REPO / "scripts"))
import finetune as finetune_script  # noqa: E402


def test_a_bare_bool_flag_is_true():
    arguments = finetune_script.parse_args(["--fixed-teaching", "--push"])
    assert arguments.fixed_teaching is True and arguments.push
    assert finetune_script.parse_args(["--fixed-teaching", "false"]).fixed_teaching is False


def test_a_bool_flag_refuses_a_typo(capsys):
    with pytest.raises(SystemExit):
        finetune_script.parse_args(["--fixed-teaching", "ture"])
    assert "--fixed-teaching: expected true or false, got 'ture'" in capsys.readouterr().err
