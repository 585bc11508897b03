"""The training-with-explanations miniature: the verdict rule and the Pareto front on constructed numbers, the
script's presets, and the ``--quick`` run end to end (every run trains for two seeds, the premises are printed, the
report holds what was measured with the command and the machine)."""

import json
import sys

import pytest
import torch
from test_guided_training import guided_scores_by_hand

from bcos_zoo.zoo.guidance_report import pareto_front, premises
from bcos_zoo.zoo.guidance_reproduction import (
    GuidanceSettings,
    default_grid,
    drawn_in_examples,
    full_grid,
    reproduce_guidance,
)
from bcos_zoo.zoo.seed_statistics import compare, summarise


REPO_SCRIPTS = __import__("pathlib").Path(__file__).resolve().parents[1] / "scripts"


def test_compare_decides_from_the_spread():
    low, high = [0.10, 0.12, 0.11], [0.50, 0.53, 0.49]
    assert compare(low, high, 0.02)["verdict"] == "holds"
    assert compare(high, low, 0.02)["verdict"] == "does not hold"  # significantly the other way
    flat = compare([0.100, 0.110, 0.105], [0.104, 0.108, 0.102], 0.02)  # no rise of 2 points within the interval
    assert flat["verdict"] == "does not hold" and flat["ci_high"] < 0.02
    noisy = compare([0.1, 0.5, 0.3], [0.2, 0.7, 0.4], 0.02)  # +0.13, but the seeds disagree
    assert noisy["verdict"] == "not resolved at this size" and noisy["p_value"] > 0.05
    assert compare([0.1], [0.9], 0.02)["verdict"] == "not resolved at this size"  # one seed decides nothing
    same = compare([0.3, 0.3], [0.3, 0.3], 0.02)
    assert same["verdict"] == "does not hold" and same["difference"] == 0
    assert compare([0.3, 0.3], [0.4, 0.4], 0.02)["verdict"] == "holds"
    tiny = compare([0.100, 0.101, 0.102], [0.105, 0.106, 0.107], 0.02)  # significant, but the whole rise < 2 points
    assert tiny["p_value"] < 0.05 and tiny["ci_high"] < 0.02 and tiny["verdict"] == "does not hold"
    welch = compare([1.0, 2.0, 3.0], [2.0, 4.0, 6.0], 0.02)  # Welch: t = 1.549, df = 2.94, p = 0.2210
    assert welch["p_value"] == pytest.approx(0.2210, abs=2e-4) and welch["difference"] == pytest.approx(2.0)


def test_summaries_premises_and_pareto_front():
    row = summarise({0: {"accuracy": 0.2, "name": "x"}, 1: {"accuracy": 0.4}})
    assert row["values"] == {"accuracy": [0.2, 0.4]} and row["mean"]["accuracy"] == pytest.approx(0.3)
    assert row["std"]["accuracy"] == pytest.approx(0.1414213, rel=1e-5)
    unguided = summarise({s: {"class_accuracy": 0.99, "accuracy": a} for s, a in enumerate([0.2, 0.85])})
    clean = summarise({s: {"clean_accuracy": a} for s, a in enumerate([0.86, 0.88])})
    checked = premises(unguided, clean)
    # every seed must meet a premise: seed 1 lost only 14 points to shuffled decoys (it did not learn the shortcut),
    # though the mean over the seeds, 46.5, is above the 20 needed
    assert [row["met"] for row in checked] == [True, False, True]
    assert checked[1]["lowest"] == pytest.approx(0.14) and checked[1]["mean"] == pytest.approx(0.465)
    assert pareto_front([(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.5)]) == [0, 1, 4, 3]


def test_script_presets():
    sys.path.insert(0, str(REPO_SCRIPTS))
    try:
        import reproduce_guidance as script
    finally:
        sys.path.remove(str(REPO_SCRIPTS))
    quick = script.parse_args(["--quick", "--seeds", "3", "4"])
    assert quick.seeds == [3, 4] and quick.train_samples == GuidanceSettings.quick().train_samples
    full = script.parse_args(["--full"])  # its own box fractions: --box-fractions is refused with it
    assert full.grid == "full" and full.runs() == full_grid() and full.seeds == [0, 1, 2]
    default = script.parse_args([])
    assert [run.box_fraction for run in default.runs()] == [1.0, 0.1, 0.01]
    assert {run.loss for run in full_grid()} == {"energy", "l1", "rrr", "ppce"}
    assert {(run.attribution, run.layer) for run in full_grid()} >= {("gradcam", "hidden"), ("ixg", "input")}
    assert {run.dilation for run in full_grid()} == {0.0, 0.1, 0.25, 0.5}
    with pytest.raises(SystemExit):
        script.parse_args(["--quick", "--full"])


def _script():
    sys.path.insert(0, str(REPO_SCRIPTS))
    try:
        import reproduce_guidance as script
    finally:
        sys.path.remove(str(REPO_SCRIPTS))
    return script


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--few-shot-per-class", "0"),
        ("--train-samples", "0"),
        ("--energy-weight", "-1"),
        ("--guidance-epochs", "-1"),
        ("--student-epochs", "0"),
        ("--kd-temperature", "0"),
        ("--explanation-weight", "-1"),
        ("--box-fractions", "0"),
        ("--seeds", "-1"),
    ],
)
def test_script_refuses_a_value_no_run_can_use_with_its_usage_line(flag, value, capsys):
    with pytest.raises(SystemExit):
        _script().parse_args(["--quick", flag, value])
    assert f"argument {flag}: must be" in capsys.readouterr().err


def test_settings_refuse_a_seed_given_twice():
    with pytest.raises(ValueError, match="each once"):
        GuidanceSettings(seeds=[0, 0])


def test_every_seeds_recipes_are_made_before_anything_trains(tmp_path, monkeypatch):
    """A setting that only a later stage's recipe refuses (the few-shot students come last) fails at once."""
    import bcos_zoo.zoo.guidance_reproduction as module

    def train_or_reuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(module, "train_or_reuse", train_or_reuse)
    settings = GuidanceSettings.quick(few_shot_per_class=0, work_dir=tmp_path / "work", output_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="max_train_samples must be at least 1, got 0"):
        reproduce_guidance(settings, command="python scripts/reproduce_guidance.py")
    assert not (tmp_path / "out").exists()


def test_the_explanation_figure_shows_every_default_run_and_a_screenful_of_the_full_grid():
    assert all(drawn_in_examples(run) for run in default_grid([1.0, 0.1, 0.01]))
    drawn = [run.name for run in full_grid() if drawn_in_examples(run)]
    assert drawn == [
        "energy, B-cos at the input, 100% boxes",
        "L1, B-cos at the input, 100% boxes",
        "RRR, B-cos at the input, 100% boxes",
        "PPCE, B-cos at the input, 100% boxes",
        "energy, B-cos at the input, 10% boxes",
        "energy, B-cos at the input, 1% boxes",
    ]
    assert drawn_in_examples(None)  # the unguided fine-tuning


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_quick_reproduction_prints_premises_and_writes_its_report(tmp_path, capsys):
    settings = GuidanceSettings.quick(
        train_samples=128, eval_samples=32, work_dir=tmp_path / "work", output_dir=tmp_path / "out", device="cpu"
    )
    report = reproduce_guidance(settings, command="python scripts/reproduce_guidance.py --quick")
    printed = capsys.readouterr().out
    for row in report["premises"]:
        assert f"premise: {row['premise']}: {100 * row['mean']:.1f} ± {100 * row['std']:.1f}" in printed
        assert ("NOT MET" if not row["met"] else "): met") in printed
    assert list(report["guidance"]) == ["none", "energy, B-cos at the input, 100% boxes",
                                        "energy, B-cos at the input, 10% boxes"]  # fmt: skip
    assert sorted(report["distillation"]) == ["KD, few-shot", "KD, full", "e2KD, few-shot", "e2KD, full"]
    guided = report["guidance"]["energy, B-cos at the input, 10% boxes"]
    assert guided["seeds"] == [0, 1] and len(guided["values"]["accuracy"]) == 2
    for seed, accuracy in zip((0, 1), guided["values"]["accuracy"]):  # each seed's model, rescored by hand
        folder = tmp_path / "work" / f"seed{seed}" / "guided" / "energy-bcos-input-boxes0.1" / "repo"
        by_hand = guided_scores_by_hand(folder, count=32, canvas=36)
        assert accuracy == pytest.approx(by_hand["accuracy"], abs=1e-9)
        assert guided["values"]["epg"][seed] == pytest.approx(by_hand["epg"], abs=1e-5)
    claims = [v["claim"] for v in report["verdicts"]]
    assert len(claims) == 4 + 8 and all(v["verdict"] for v in report["verdicts"])
    assert json.loads((tmp_path / "out" / "guidance.json").read_text())["verdicts"] == report["verdicts"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "python scripts/reproduce_guidance.py --quick" in text and "## Verdicts" in text and "## Premises" in text
    expected = {"guidance.png", "pareto.png", "e2kd.png", "explanations.png"}
    assert {path.name for path in (tmp_path / "out").glob("*.png")} == expected
    again = reproduce_guidance(settings, command="again")  # finished runs are re-used, not trained again
    assert again["guidance"] == json.loads(json.dumps(report["guidance"]))
    assert again["training_seconds"] == report["training_seconds"]  # the runs' own times, not this call's
    records = (tmp_path / "work").rglob("results.json")  # every run's own record, each counted once
    recorded = sum(json.loads(path.read_text())["metrics"]["train_seconds"] for path in records)
    assert sum(again["training_seconds"].values()) == pytest.approx(recorded)


def test_a_run_guided_on_another_attribution_is_compared_with_that_attribution_of_the_unguided_model():
    """The unguided model's IxG maps localise otherwise than its B-cos ones: an IxG-guided run's EPG is compared
    with the unguided model's IxG EPG, a B-cos-guided run's with its B-cos EPG."""
    from dataclasses import asdict

    from bcos_zoo.zoo.guidance_report import epg_of, verdicts
    from bcos_zoo.zoo.guidance_reproduction import GuidanceRun

    def rows(**values):
        return summarise({seed: {key: value[seed] for key, value in values.items()} for seed in range(3)})

    ixg = GuidanceRun(attribution="ixg")
    none = rows(epg=[0.30, 0.31, 0.32], accuracy=[0.1] * 3, **{epg_of(asdict(ixg)): [0.60, 0.61, 0.62]})
    guidance = {
        "none": {**none, "run": None},
        "ixg": {**rows(epg=[0.61, 0.60, 0.62], accuracy=[0.1] * 3), "run": asdict(ixg)},
        "bcos": {**rows(epg=[0.61, 0.60, 0.62], accuracy=[0.1] * 3), "run": asdict(GuidanceRun())},
    }
    kd = rows(accuracy=[0.5] * 3)
    decided = {
        v["claim"]: v
        for v in verdicts(guidance, {f"{m}, {s}": kd for m in ("KD", "e2KD") for s in ("few-shot", "full")})
    }
    assert decided["guidance (ixg) raises EPG"]["difference"] == pytest.approx(0.0)
    assert decided["guidance (bcos) raises EPG"]["difference"] == pytest.approx(0.30)
    assert epg_of(asdict(GuidanceRun())) == "epg" and epg_of(None) == "epg"


@pytest.mark.usefixtures("fashion_mnist")
def test_the_whole_grid_scores_the_unguided_model_under_every_attribution_and_place_it_guides(tmp_path):
    from transformers import AutoConfig, AutoModelForImageClassification

    from bcos_zoo.training.guided_classification import localisation_scores
    from bcos_zoo.zoo.guidance_reproduction import GuidanceSettings, test_images, unguided_epg
    from bcos_zoo.zoo.recipes import DECOY_RESNET

    torch.manual_seed(0)
    config = AutoConfig.for_model(**DECOY_RESNET, num_labels=10)
    AutoModelForImageClassification.from_config(config).save_pretrained(tmp_path / "unguided")
    settings = GuidanceSettings(grid="full", eval_samples=8, device="cpu")
    scores = unguided_epg(tmp_path / "unguided", settings)
    assert sorted(scores) == ["epg bcos hidden", "epg gradcam hidden", "epg ixg hidden", "epg ixg input"]
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "unguided").eval()
    direct = localisation_scores(model, test_images("shuffled", 8), 4, settings.hidden_layer, "gradcam")["epg"]
    assert scores["epg gradcam hidden"] == pytest.approx(direct)
    assert unguided_epg(tmp_path / "unguided", GuidanceSettings(grid="default", device="cpu")) == {}


def test_box_fractions_that_round_alike_are_runs_of_their_own_and_a_repeat_is_refused():
    from bcos_zoo.zoo.guidance_reproduction import GuidanceSettings

    runs = GuidanceSettings(box_fractions=[1.0, 0.01, 0.005, 0.001]).runs()
    assert [run.name.split(", ")[-1] for run in runs] == ["100% boxes", "1% boxes", "0.5% boxes", "0.1% boxes"]
    with pytest.raises(ValueError, match="give each box fraction once"):
        GuidanceSettings(box_fractions=[0.1, 0.1])


def test_a_setting_the_chosen_grid_does_not_read_is_refused():
    from bcos_zoo.zoo.guidance_reproduction import GuidanceSettings

    with pytest.raises(ValueError, match="--hidden-layer is the whole grid's"):
        GuidanceSettings(hidden_layer="bcos_resnet.encoder.stages.1")
    with pytest.raises(ValueError, match="--box-fractions are the default runs'"):
        GuidanceSettings(grid="full", box_fractions=[1.0, 0.5])
    assert GuidanceSettings(grid="full", hidden_layer="bcos_resnet.encoder.stages.1").runs()
