"""The training-with-explanations miniature end to end at toy size: every run trains, and the report holds what it
measured with the command and the machine."""

import json

import pytest
from test_guided_training import guided_scores_by_hand

from bcos_zoo.zoo.guidance_reproduction import GuidanceSettings, reproduce_guidance


pytestmark = pytest.mark.slow


@pytest.mark.usefixtures("fashion_mnist")
def test_toy_reproduction_writes_its_report_figures_and_verdict(tmp_path):
    settings = GuidanceSettings(
        train_samples=32,
        eval_samples=16,
        epochs=0.25,
        teacher_epochs=0.25,
        few_shot_per_class=2,
        few_shot_epochs=0.25,
        box_fractions=[0.1],
        num_examples=2,
        output_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        device="cpu",
    )
    report = reproduce_guidance(settings, command="python scripts/reproduce_guidance.py --toy")
    assert sorted(report["guidance"]) == ["boxes 10%", "none"]
    for name, folder in (("none", "none"), ("boxes 10%", "boxes-10pct")):
        expected = guided_scores_by_hand(tmp_path / "work" / folder / "repo", count=16)
        run = report["guidance"][name]
        assert {key: run[key] for key in expected} == pytest.approx(expected, abs=1e-5), name
    assert report["machine"]["load_average_start"] and report["settings"]["output_dir"] == str(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "guidance.json").read_text())["verdict"] == report["verdict"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "python scripts/reproduce_guidance.py --toy" in text and "## Verdict" in text
    assert {path.name for path in (tmp_path / "out").glob("*.png")} == {"guidance.png", "e2kd.png", "explanations.png"}
