"""The benchmark scripts run end to end at tiny size, time remote code in a process that cannot import bcos_zoo, and
print (and collect in CSV) figures that agree with each other. The figures themselves belong to the docs."""

import csv
import importlib.util
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sources import hf_vit
from training_testing import REPO, child_env

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.zoo.benchmarking import CSV_COLUMNS, Benchmark, Pair, Settings, save_pair


SCRIPTS = REPO / "scripts"
TINY = ["--image-size", "32", "--batch-size", "2", "--repeats", "1", "--threads", "1"]


def run(script: str, *arguments: str) -> str:
    command = [sys.executable, str(SCRIPTS / script), *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


def table_rows(stdout: str, label: str) -> list[list[str]]:
    """The printed rows of ``label``: its fast-path setting ("on"/"off"), then its figures."""
    rows = [line[len(label) :].split() for line in stdout.splitlines() if line.startswith(label + " ")]
    return [row for row in rows if row and row[0] in ("on", "off")]


def close(printed: float, expected: float) -> bool:
    """Equal up to the rounding of the printed figures (throughputs to 0.1, ratios to 0.01)."""
    return abs(printed - expected) <= 0.01 * abs(expected) + 0.01


def check_compare_row(cells: list[str], class_token: bool) -> list[float]:
    """The printed figures of a row, checked against each other; the last (the forward with
    ``class_token_only=True``) is printed for class-token classifiers and is ``-`` for the others."""
    *numbers, class_token_ratio = cells
    source, bcos, ratio, explained, cost, source_step, bcos_step, step_ratio = (float(v) for v in numbers)
    assert min(source, bcos, explained, source_step, bcos_step) > 0
    assert close(ratio, bcos / source)  # each ratio is of the two throughputs printed beside it
    assert close(cost, bcos / explained)
    assert close(step_ratio, bcos_step / source_step)
    assert (class_token_ratio != "-") == class_token
    return [source, bcos, ratio, explained, cost, source_step, bcos_step, step_ratio] + (
        [float(class_token_ratio)] if class_token else []
    )


def check_memory_row(figures: list[float]) -> None:
    source_growth, bcos_growth, weights, extra_pct, held_pct = figures
    assert weights > 1
    assert abs(extra_pct - 100 * (bcos_growth - source_growth) / weights) <= 0.1 + 0.1 * 100 / weights
    assert abs(held_pct) < 5  # neither model holds a tensor more after its forward passes than before


def timing_module():
    spec = importlib.util.spec_from_file_location("timing_under_test", SCRIPTS / "timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("caches", [False, True])
def test_held_tensors_show_a_copy_of_the_weights_a_model_caches_in_its_forward(caches):
    """What the memory target is about, measured exactly: a module that keeps a derived copy of its weight grows by
    that weight's bytes; one that does not, by nothing."""

    class Layer(torch.nn.Linear):
        def forward(self, x):
            if caches:
                self.scaled = self.weight / self.weight.norm(dim=1, keepdim=True)  # a second copy, kept
            return super().forward(x)

    held = timing_module().held_tensor_bytes
    layer, x = Layer(256, 128), torch.rand(4, 256)
    before = held()
    with torch.inference_mode():
        layer(x)
    assert held() - before == (256 * 128 * 4 if caches else 0)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


@pytest.mark.slow
@pytest.mark.subprocess
def test_transformer_benchmark_times_remote_code_and_prints_ratios_memory_and_csv(tmp_path):
    table = tmp_path / "vit.csv"
    out = run("benchmark.py", "--models", "vit", "--memory-models", "vit", "--csv", str(table), *TINY)
    printed = table_rows(out, "ViT-S/16 32px")
    assert [row[0] for row in printed] == ["on", "on"]  # forward/explanation/step, then memory
    compare = check_compare_row(printed[0][1:], class_token=True)
    memory = [float(v) for v in printed[1][1:]]
    check_memory_row(memory)
    assert ">=0.90" in out and "<=2.20" in out and ">=0.85" in out and "<=5.00" in out  # the targets
    # the B-cos model was the folder's remote code, and no timing process could import bcos_zoo
    assert "transformers_modules." in out and "modeling_bcos_vit.BcosViTForImageClassification" in out
    assert "import bcos_zoo in the timing processes: failed in all 3" in out  # compare, memory of source and B-cos
    (row,) = read_csv(table)
    assert row["model"] == "ViT-S/16 32px" and row["fast_paths"] == "on" and row["threads"] == "1"
    assert close(float(row["forward_ratio"]), compare[2]) and close(float(row["step_ratio"]), compare[7])
    assert close(float(row["memory_extra_growth_pct"]), memory[3]) and row["forward_target"] == "0.9"
    assert close(float(row["memory_extra_held_pct"]), memory[4])
    assert compare[8] > 0 and close(float(row["class_token_forward_ratio"]), compare[8])


@pytest.mark.slow
@pytest.mark.subprocess
def test_transformer_benchmark_measures_fine_tuning_through_the_trainer():
    out = run("benchmark.py", "--models", "--memory-models", "--train", *TINY)
    ((setting, source, bcos, ratio),) = table_rows(out, "ViT-S/16 32px")
    assert setting == "on" and close(float(ratio), float(bcos) / float(source))
    assert ">=0.85" in out and "failed in all 1" in out


@pytest.mark.slow
@pytest.mark.subprocess
def test_cnn_benchmark_prints_default_and_reference_rows_and_appends_them_to_the_csv(tmp_path):
    table = tmp_path / "cnn.csv"
    out = run("benchmark_cnn.py", "--models", "resnet18", "--memory-models", "--reference", "--csv", str(table), *TINY)
    printed = table_rows(out, "ResNet-18 32px")
    assert [row[0] for row in printed] == ["on", "off"]  # every fast path on, then off
    for row in printed:
        check_compare_row(row[1:], class_token=False)  # a CNN has no class token
    assert ">=0.80" in out and "<=2.50" in out
    assert "modeling_bcos_resnet.BcosResNetForImageClassification" in out
    assert "import bcos_zoo in the timing processes: failed in all 2" in out
    written = read_csv(table)
    assert [(row["model"], row["fast_paths"]) for row in written] == [("ResNet-18 32px", s) for s in ("on", "off")]
    assert all(close(float(row["forward_ratio"]), float(line[3])) for row, line in zip(written, printed))
    assert all(row["class_token_forward_ratio"] == "" for row in written)


def test_csv_appends_under_one_header_and_plots_one_png(tmp_path):
    settings = Settings("cpu", "float32", 2, 32, 1, 1, False, False, (True, False))
    bench = Benchmark(settings, SCRIPTS / "timing.py", {}, tmp_path)
    bench.record("ViT-S/16 32px", True, forward_ratio=0.95, explain_over_forward=2.0, step_ratio=0.9)
    bench.record("ViT-S/16 32px", False, forward_ratio=0.9, memory_extra_growth_pct=-1.5)
    table = tmp_path / "speed" / "vit.csv"
    bench.append_csv(table)
    bench.append_csv(table)
    rows = read_csv(table)
    assert [row["fast_paths"] for row in rows] == ["on", "off", "on", "off"]
    assert rows[0]["forward_target"] == "0.9" and rows[1]["memory_extra_growth_pct"] == "-1.5"
    plot_speed = runpy.run_path(str(SCRIPTS / "plot_speed.py"))
    png = plot_speed["plot"](table, tmp_path / "vit.png")
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def saved_tiny_vit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    source = hf_vit().eval()
    bcos = BcosViTForImageClassification.from_pretrained_standard(source, b=2.0, bias="remove").eval()
    saved = save_pair(Pair("tiny", source, bcos, "classifier", (0.5,) * 3, (0.5,) * 3, num_labels=5), folder)
    spec = dict(saved.model_spec, task="compare", device="cpu", dtype="float32", batch_size=1, image_size=32)
    spec.update(rounds=1, threads=1, compile=False, flush_denormals=False)
    return folder, spec


@pytest.mark.subprocess
def test_timing_process_cannot_import_bcos_zoo_even_with_the_checkout_on_its_path(saved_tiny_vit):
    folder, spec = saved_tiny_vit
    env = child_env(PYTHONPATH=str(REPO), HF_MODULES_CACHE=str(folder / "modules"))
    command = [sys.executable, str(SCRIPTS / "timing.py"), json.dumps(spec)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.splitlines()[-1])
    assert result["bcos_zoo_importable"] is False
    assert result["bcos_class"].startswith("transformers_modules.")
    assert result["forward_ratio"] > 0 and result["class_token_forward_ratio"] > 0


@pytest.mark.subprocess
def test_timing_process_refuses_to_run_after_bcos_zoo_was_imported(saved_tiny_vit):
    _, spec = saved_tiny_vit
    code = "import bcos_zoo, runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    command = [sys.executable, "-c", code, str(SCRIPTS / "timing.py"), json.dumps(spec)]
    completed = subprocess.run(command, capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=120)
    assert completed.returncode != 0
    assert "bcos_zoo was imported before timing began" in completed.stderr


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("bcos", "einops")),
    reason="the authors' bcos package (and einops) is not installed",
)
def test_transformer_benchmark_compares_with_the_authors_package():
    tiny = ["--batch-size", "1", "--repeats", "1", "--threads", "1"]
    out = run("benchmark.py", "--models", "authors-vit", "--memory-models", *tiny)
    ((setting, *figures),) = table_rows(out, "ViT-S/16 224px")
    assert setting == "on"
    ours, theirs, speedup, class_token_speedup, ours_explained, theirs_explained, explain_speedup = map(float, figures)
    assert close(speedup, ours / theirs) and close(explain_speedup, ours_explained / theirs_explained)
    assert class_token_speedup > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_benchmark_refuses_a_machine_without_cuda_before_running_anything(tmp_path):
    completed = subprocess.run(
        ["bash", str(REPO / "scripts" / "benchmark_gpu.sh"), str(tmp_path / "gpu")],
        capture_output=True, text=True, env=child_env(PYTHON=sys.executable), timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1
    assert "no CUDA device" in completed.stderr
    assert list((tmp_path / "gpu").iterdir()) == []


@pytest.mark.slow
def test_faithfulness_benchmark_times_each_metric_of_both_models_at_tiny_size(capsys):
    benchmark = runpy.run_path(str(SCRIPTS / "benchmark_faithfulness.py"))
    arguments = ["--image-size", "32", "--images", "2", "--steps", "3", "--road-images", "1"]
    arguments += ["--road-fractions", "0.3", "0.6"]
    rows = benchmark["main"](arguments)
    assert [(row["model"], row["metric"]) for row in rows] == [
        (model, metric) for model in ("B-cos ViT-S", "ViT-S") for metric in ("deletion", "insertion", "road_morf")
    ]
    assert [(row["images"], row["points"]) for row in rows[:3]] == [(2, 4), (2, 4), (1, 2)]
    assert all(row["seconds"] > 0 for row in rows)
    assert "forwards/s" in capsys.readouterr().out


def test_a_figure_measured_at_other_settings_than_the_run_s_gets_a_row_that_states_them(tmp_path):
    """The authors' ViT only takes 224 px and is never compiled; the memory passes and the Trainer are not compiled
    either: their rows say so instead of carrying the run's --image-size and --compile."""
    settings = Settings("cpu", "float32", 2, 32, 1, 1, True, True, (True,))
    bench = Benchmark(settings, SCRIPTS / "timing.py", {}, tmp_path)
    bench.record("ViT-S/16 32px", True, forward_ratio=1.0)
    bench.record("ViT-S/16 32px", True, {"compile": False}, memory_extra_held_pct=0.0)
    bench.record("ViT-S/16 224px", True, {"image_size": 224, "compile": False}, authors_forward_speedup=1.1)
    bench.record("ViT-S/16 32px", True, {"image_size": 32}, class_token_forward_ratio=1.0)  # the run's own: no row
    rows = {(row["model"], row["image_size"], row["compile"]): row for row in bench.csv_rows()}
    assert set(rows) == {("ViT-S/16 32px", 32, True), ("ViT-S/16 32px", 32, False), ("ViT-S/16 224px", 224, False)}
    assert rows[("ViT-S/16 32px", 32, True)]["class_token_forward_ratio"] == 1.0
    assert "forward_ratio" not in rows[("ViT-S/16 32px", 32, False)]


@pytest.mark.subprocess
def test_a_cnn_benchmark_whose_training_step_would_see_one_value_per_channel_is_refused_at_once():
    command = [sys.executable, str(SCRIPTS / "benchmark_cnn.py"), "--models", "resnet18", "--batch-size", "1"]
    completed = subprocess.run([*command, "--image-size", "32"], capture_output=True, text=True, env=child_env())
    assert completed.returncode == 2 and "use --batch-size 2 or more" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.subprocess
def test_two_csvs_of_one_name_drawn_into_one_folder_are_refused_before_either_is_drawn(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "cnn.csv").write_text(",".join(CSV_COLUMNS) + "\n")
    command = [
        sys.executable,
        str(SCRIPTS / "plot_speed.py"),
        str(tmp_path / "a" / "cnn.csv"),
        str(tmp_path / "b" / "cnn.csv"),
    ]
    completed = subprocess.run(
        [*command, "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, env=child_env()
    )
    assert completed.returncode == 2 and "would be drawn to one file" in completed.stderr
    assert not (tmp_path / "out").exists()
