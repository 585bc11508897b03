"""scripts/port_bcos.py: the bcos package's release files as Hub repos (weights, config, remote code, the entry's
image processor, a model card with the authors' numbers and the measured conversion error), on release files with
random weights that the tests write under the package's file names; pushed to the loopback Hub of tests/fake_hub.py,
and loaded from there by the classifier Space."""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from fake_hub import FakeHub
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from training_testing import REPO

from bcos_zoo import FAMILIES
from bcos_zoo.zoo.bcos_releases import default_repo_id, is_release_port, release_of_file, releases
from bcos_zoo.zoo.cli import run_script


pytest.importorskip("bcos")
from bcos.models import pretrained  # noqa: E402


SCRIPT = REPO / "scripts" / "port_bcos.py"
SPACE = REPO / "spaces" / "bcos-vit-explainer"
# small entries of three families (the ViT-C is the simple ViT with a convolutional stem; ConvNeXt: the dry run).
# The loopback Hub takes every file as a regular upload, which huggingface_hub splits into commits of at most 100 MB:
# these weights stay below that (the ConvNeXt-T's do not), so that each push is one commit, as on the Hub.
ENTRIES = ("resnet18", "densenet121", "simple_vit_ti_patch16_224", "vitc_ti_patch1_14")
TWIN = "standard_vitc_ti_patch1_14"
REPO_FILES = {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"}


def write_release(folder, entry: str, name: str | None = None, seed: int = 0):
    """A release file of ``entry`` with random weights, under the package's file name (or ``name``)."""
    torch.manual_seed(seed)
    path = folder / (name or releases()[entry].file_name)
    torch.save(getattr(pretrained, entry)(pretrained=False).state_dict(), path)
    return path


def load_script():
    spec = importlib.util.spec_from_file_location("port_bcos_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(argv: list[str]) -> int:
    script = load_script()
    return run_script(lambda: script.main(argv))


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """Release files of the small entries and of a standard twin, and a file that is no release."""
    folder = tmp_path_factory.mktemp("releases")
    for entry in (*ENTRIES, TWIN):
        write_release(folder, entry)
    (folder / "my_finetuned_model.pth").write_bytes(b"not a release")
    return folder


def test_releases_are_the_packages_entries_with_their_files_transforms_and_reported_numbers():
    found = releases()
    assert len(found) == 34
    bcos_entries = {entry for family in FAMILIES.values() for entry in family.bcos_entries}
    assert {entry for entry, release in found.items() if not release.standard} == bcos_entries
    assert len(bcos_entries) == 26 and sum(release.standard for release in found.values()) == 8
    assert len({release.file_name for release in found.values()}) == 34
    # the file name is not the entry name: it comes from the experiment the entry function loads
    assert found["convnext_tiny"].file_name == "convnext_tiny_pn-539b1bfb37.pth"
    assert found["resnet50_long"].file_name == "resnet_50_long-ef38a88533.pth"
    assert found["simple_vit_s_patch16_224"].file_name == "bcos_simple_vit_s_patch16_224-75e99d1f73.pth"
    assert found["standard_simple_vit_s_patch16_224"].file_name == "standard_simple_vit_s_patch16_224-f2934fcdcf.pth"
    resnet18 = found["resnet18"]
    assert (resnet18.top1, resnet18.top5, resnet18.params, resnet18.sha256_prefix) == (
        68.736,
        87.43,
        "11.69M",
        "68b4160fff",
    )
    assert all(release.top1 and release.top5 and release.params for release in found.values())
    longer = {entry for entry in found if entry.startswith("convnext") or entry.endswith("_long")}
    assert len(longer) == 7
    assert all(release.resize == (232 if entry in longer else 256) for entry, release in found.items())
    assert {(release.crop, release.interpolation) for release in found.values()} == {(224, "bilinear")}
    assert release_of_file("/some/where/resnet_50_long-ef38a88533.pth").entry == "resnet50_long"
    assert release_of_file("resnet50.pth") is None


@pytest.fixture(scope="module")
def dry_run(release_dir, tmp_path_factory):
    """``--entry convnext_tiny ... --dry-run``: its output folder and what it printed."""
    output = tmp_path_factory.mktemp("dry_run")
    weights = write_release(output, "convnext_tiny")
    argv = ["--entry", "convnext_tiny", "--weights", str(weights), "--hub-model-id", "org/cnx", "--dry-run"]
    script = load_script()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert script.main([*argv, "--output-dir", str(output)]) == 0
    return output / "convnext_tiny", stdout.getvalue()


@pytest.mark.slow  # the dry run ports a full-size ConvNeXt-T
def test_dry_run_writes_the_repo_folder_lists_it_and_uploads_nothing(dry_run):
    folder, stdout = dry_run
    names = {path.name for path in folder.iterdir()}
    assert names >= REPO_FILES | {"modeling_bcos_convnext.py", "configuration_bcos_convnext.py"}
    assert "exact tree a push to org/cnx would upload" in stdout
    assert all(name in stdout for name in names)
    assert "conversion error on 2 random images: float64: max |difference|" in stdout
    assert "is not the released file" in stdout  # random weights: the SHA-256 is not the release's

    card = ModelCard.load(folder / "README.md")
    assert "77.488%" in card.text and "93.192%" in card.text and "28.54M" in card.text
    assert "ImageNet's terms of access" in card.text and "TPAMI" in card.text
    assert "--entry convnext_tiny --weights convnext_tiny_pn-539b1bfb37.pth" in card.text
    assert "| float64 |" in card.text and "are not those of the release file" in card.text
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert [(r.metric_type, r.metric_value) for r in results] == [("accuracy", 0.77488), ("top_5_accuracy", 0.93192)]
    assert card.data.license == "other" and "bcos-v2" in card.data.tags


@pytest.mark.slow  # ports resnet18 twice
def test_a_previous_port_is_replaced_and_a_folder_of_the_user_s_is_left_alone(release_dir, tmp_path, capsys):
    weights = str(release_dir / releases()["resnet18"].file_name)
    argv = ["--entry", "resnet18", "--weights", weights, "--output-dir", str(tmp_path), "--dry-run"]
    assert run_main(argv) == 0 and run_main(argv) == 0  # the second run replaces the first's port
    assert ModelCard.load(tmp_path / "resnet18" / "README.md").data.tags
    mine = tmp_path / "mine"
    (mine / "resnet18").mkdir(parents=True)
    for name, text in {"config.json": "{}", "README.md": "my notes", "training_notes.txt": "keep me"}.items():
        (mine / "resnet18" / name).write_text(text)
    capsys.readouterr()
    assert run_main([*argv[:4], "--output-dir", str(mine), "--dry-run"]) == 2
    assert "does not hold a ported release" in capsys.readouterr().err
    assert sorted(path.name for path in (mine / "resnet18").iterdir()) == [
        "README.md",
        "config.json",
        "training_notes.txt",
    ]


@pytest.mark.slow  # ports resnet18 three times
def test_a_port_stopped_part_way_leaves_the_previous_port_as_it_was_and_a_rerun_replaces_it(
    release_dir, tmp_path, monkeypatch
):
    import bcos_zoo.zoo.cards as cards

    weights = str(release_dir / releases()["resnet18"].file_name)
    argv = ["--entry", "resnet18", "--weights", weights, "--output-dir", str(tmp_path), "--dry-run"]
    assert run_main(argv) == 0
    before = {path.name: path.read_bytes() for path in (tmp_path / "resnet18").iterdir() if path.is_file()}

    def killed(*args, **kwargs):  # as a kill after the weights were written, before the model card
        raise KeyboardInterrupt

    monkeypatch.setattr(cards, "render_release_card", killed)
    assert run_main(argv) == 130
    after = {path.name: path.read_bytes() for path in (tmp_path / "resnet18").iterdir() if path.is_file()}
    assert after == before
    monkeypatch.undo()
    assert run_main(argv) == 0 and is_release_port(tmp_path / "resnet18")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["resnet18"]


@pytest.mark.slow  # the dry run ports a full-size ConvNeXt-T
def test_the_processor_is_the_entrys_test_transform_and_the_port_computes_the_package_model(dry_run, tmp_path):
    """Resize 232 (ConvNeXt) or 256, bilinear, centre crop 224, [0, 1], no normalisation: the same pixels as the
    package's own test transform; the saved model gives the package model's logits on them."""
    from transformers import AutoImageProcessor

    from bcos_zoo import BcosResNetForImageClassification

    weights = write_release(tmp_path, "resnet18")
    argv = ["--entry", "resnet18", "--weights", str(weights), "--check-images", "1", "--output-dir", str(tmp_path)]
    assert run_main(argv) == 0
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    for entry, folder, resize in (("convnext_tiny", dry_run[0], 232), ("resnet18", tmp_path / "resnet18", 256)):
        config = json.loads((folder / "preprocessor_config.json").read_text())
        assert config["resample"] == 2 and not config["do_normalize"] and config["do_rescale"]
        assert config["size"]["shortest_edge"] == resize and config["do_center_crop"]
        theirs = getattr(pretrained, entry)(pretrained=False)
        theirs.load_state_dict(torch.load(folder.parent / releases()[entry].file_name, weights_only=True))
        reference = theirs.eval().transform(image)[:3]  # the package adds [1 - x] itself
        pixels = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt").pixel_values
        assert pixels.shape == (1, 3, 224, 224)
        assert (pixels[0] - reference).abs().max() <= 1.01 / 255 and (pixels[0] - reference).abs().mean() < 1e-3
    ours = BcosResNetForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = theirs(torch.cat([pixels, 1 - pixels], 1))
        torch.testing.assert_close(ours(pixel_values=pixels).logits, expected, rtol=1e-5, atol=1e-5)


def test_a_cnn_that_was_not_ported_keeps_its_resize_filter():
    from bcos_zoo import BcosResNetConfig, BcosResNetForImageClassification

    config = BcosResNetConfig(depths=[1], hidden_sizes=[16], layer_type="basic", num_labels=3)
    assert BcosResNetForImageClassification(config).default_image_processor().resample == 3  # bicubic, as before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--entry", "resnet19", "--weights", "{file}"], "'resnet19' is not a bcos model this package ports"),
        (["--entry", TWIN, "--weights", "{file}"], r"standard \(not B-cos\) model .* --recipe bcos-vitc-ti-paper"),
        (["--entry", "resnet18", "--weights", "{dir}/missing.pth"], r"missing.pth: no such file .*resnet_18-68b4"),
        (["--entry", "resnet34", "--weights", "{file}"], "is the release file of resnet18, not of resnet34"),
        (["--entry", "densenet121", "--weights", "{renamed}"], "do not fit bcos entry 'densenet121'"),
        (["--entry", "resnet18", "--weights", "{file}", "--hub-model-id", "no-org"], "must look like 'org/name'"),
        (["--entry", "resnet18", "--weights", "{file}", "--hub-model-id", "my org/bcos v2!"], "is not a Hub repo id"),
        (["--all", "{empty}"], "no release file of a B-cos entry there"),
        (["--all", "{file}"], "not a folder of release files"),
        (
            ["--entry", "resnet18", "--weights", "{cut}"],
            "cannot be read as a PyTorch weights file .* Download it again",
        ),
    ],
)
def test_mistakes_end_in_one_line_that_says_what_is_wrong(release_dir, tmp_path, capsys, argv, message):
    import re

    paths = dict(
        file=release_dir / releases()["resnet18"].file_name,
        dir=tmp_path,
        renamed=write_release(tmp_path, "resnet18", name="my_weights.pth"),
        empty=tmp_path / "empty",
        cut=tmp_path / "cut" / releases()["resnet18"].file_name,  # an interrupted download
    )
    paths["empty"].mkdir()
    paths["cut"].parent.mkdir()
    paths["cut"].write_bytes(paths["file"].read_bytes()[: paths["file"].stat().st_size // 2])
    argv = [arg.format(**paths) for arg in argv]
    assert run_main([*argv, "--output-dir", str(tmp_path / "out"), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), lines


def test_arguments_that_do_not_go_together_are_refused_by_the_parser(capsys):
    script = load_script()
    for argv, message in (
        (["--entry", "resnet18"], "--entry needs --weights FILE"),
        (["--all", "x", "--weights", "y"], "--all takes no --weights"),
        (["--entry", "resnet18", "--weights", "y", "--hub-org", "o"], "--hub-org goes with --all"),
        (["--entry", "resnet18", "--weights", "y", "--push", "--dry-run"], "not allowed with argument"),
    ):
        with pytest.raises(SystemExit) as exit:
            script.parse_args(argv)
        assert exit.value.code == 2 and message in capsys.readouterr().err


def test_push_without_the_hub_fails_before_porting(release_dir, tmp_path, capsys):
    weights = release_dir / releases()["resnet18"].file_name
    argv = ["--entry", "resnet18", "--weights", str(weights), "--push", "--output-dir", str(tmp_path)]
    assert run_main(argv) == 2  # the tests run with HF_HUB_OFFLINE=1
    assert "HF_HUB_OFFLINE is set, so nothing can be pushed" in capsys.readouterr().err
    assert not (tmp_path / "resnet18").exists()


@pytest.mark.slow  # ports several entries
def test_all_reports_a_file_that_fails_and_ports_the_others(tmp_path, capsys):
    write_release(tmp_path, "resnet18")
    write_release(tmp_path, "resnet18", name=releases()["resnet34"].file_name)  # resnet34's name, resnet18's weights
    assert run_main(["--all", str(tmp_path), "--check-images", "1", "--output-dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "error: resnet_34-a63425a03e.pth: The weights do not fit bcos entry 'resnet34'" in captured.err
    assert "error: 1 of 2 failed: resnet34" in captured.err
    assert (tmp_path / "out" / "resnet18" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "resnet34").exists()


@pytest.mark.subprocess
def test_all_pushes_a_folder_of_release_files_to_the_hub_and_the_space_loads_them(release_dir, tmp_path):
    """``--all`` ports every release file (one commit per repo), skips the twin and the unknown file with a note,
    and the classifier Space, in a process that cannot import bcos_zoo, explains with a ported CNN and ViT by Hub id
    exactly what the local folders compute."""
    with FakeHub() as hub:
        env = hub.env(tmp_path / "home", OMP_NUM_THREADS="1")
        command = [
            sys.executable,
            str(SCRIPT),
            "--all",
            str(release_dir),
            "--hub-org",
            "org",
            "--push",
            "--check-images",
            "1",
        ]
        completed = subprocess.run(
            [*command, "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert "skipped my_finetuned_model.pth: not the file name of any bcos release" in completed.stdout
        twin = releases()[TWIN].file_name
        assert f"skipped {twin}: {TWIN} is a standard (not B-cos) model" in completed.stdout
        assert "porting: 100%" in completed.stderr  # the progress bar
        for entry in ENTRIES:
            repo_id = default_repo_id(entry, "org")
            commits = [c.message for c in hub.commits(repo_id) if c.message != "initial commit"]
            assert commits == [f"Port of the bcos package's {entry} ({releases()[entry].file_name})"]
            files = hub.files(repo_id)
            assert set(files) >= REPO_FILES
            assert files["model.safetensors"] == (tmp_path / "out" / entry / "model.safetensors").read_bytes()
            card = ModelCard(files["README.md"].decode())
            assert f"{releases()[entry].top1:.3f}%" in card.text and repo_id in card.text
        assert not any(TWIN in repo for repo in hub.repos())

        cnn, vit = default_repo_id("resnet18", "org"), default_repo_id("vitc_ti_patch1_14", "org")
        image = tmp_path / "photo.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (240, 300, 3), dtype=np.uint8)).save(image)
        code = f"""
            import json, sys
            sys.modules["bcos_zoo"] = None  # the Hub repos and the Space stand on their own
            sys.path.insert(0, {str(SPACE)!r})
            import app
            results = {{}}
            for name in {[cnn, vit]!r}:
                chosen = app.classifier(name)
                pixel_values, explanation = app.explain(chosen, app.read_image({str(image)!r}), None)
                top5, *_, summary, label = app.top_predictions(chosen, {str(image)!r})
                results[name] = dict(logits=explanation.logits[0].tolist(), label=label, summary=summary)
            print(json.dumps(results))
        """
        space_env = hub.env(tmp_path / "space_home", MODEL_ID=cnn, MODEL_IDS=vit, GRADIO_ANALYTICS_ENABLED="False")
        space_env.update(OMP_NUM_THREADS="1", PYTHONPATH="")
        space_env["GRADIO_TEMP_DIR"] = str(tmp_path)  # the Space reads only its uploads: the photo is one
        child = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            env=space_env,
            cwd=tmp_path,
            timeout=600,
        )
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    for entry, name in (("resnet18", cnn), ("vitc_ti_patch1_14", vit)):
        folder = tmp_path / "out" / entry
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        pixels = AutoImageProcessor.from_pretrained(folder)(Image.open(image).convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            expected = model(pixel_values=pixels.pixel_values).logits[0]
        torch.testing.assert_close(torch.tensor(results[name]["logits"]), expected, rtol=1e-5, atol=1e-5)
        assert f"Model: `{name}`" in results[name]["summary"]
        assert results[name]["label"] == model.config.id2label[int(expected.argmax())]


def test_the_catalogue_lists_every_release_with_its_numbers_and_command():
    catalogue = (REPO / "docs" / "zoo.md").read_text()
    for entry, release in releases().items():
        row = next((line for line in catalogue.splitlines() if line.startswith(f"| `{entry}` |")), None)
        assert row is not None, f"docs/zoo.md has no row for {entry}"
        assert f"{release.top1:.3f} / {release.top5:.3f}" in row and release.params in row, row
        assert f"`{release.file_name}`" in row and f"| {release.resize} |" in row, row
        if not release.standard:
            assert f"--entry {entry} --weights {release.file_name}" in row, row
    assert os.path.basename(str(SCRIPT)) in catalogue
