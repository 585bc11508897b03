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


def test_the_dataloader_worker_count_reaches_the_run_and_a_negative_one_is_refused(monkeypatch, capsys):
    import bcos_zoo.zoo.finetune

    seen = {}

    def run(recipe, output_dir, **kwargs):  # what the script hands the run, which a recipe test need not train
        seen.update(kwargs)
        return bcos_zoo.zoo.finetune.FinetuneResult(output_dir, None)

    monkeypatch.setattr(bcos_zoo.zoo.finetune, "finetune", run)
    finetune_script.main(["--model", "scratch", "--dataset", "d", "--dataloader-num-workers", "3"])
    assert seen["dataloader_num_workers"] == 3
    with pytest.raises(SystemExit):
        finetune_script.parse_args(["--dataloader-num-workers", "-1"])
    assert "--dataloader-num-workers" in capsys.readouterr().err
