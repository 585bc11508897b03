"""What a model card says is what was measured: the source by name, the split as it is, the exact command."""

import json
import shlex
import sys
from dataclasses import replace

import pytest
from huggingface_hub import ModelCard
from markdown_it import MarkdownIt
from sources import hf_vit, save_hf_source
from training_testing import REPO, make_image_folder

from bcos_zoo.data.datasets import DatasetSplits
from bcos_zoo.training import TASKS, get_task
from bcos_zoo.zoo.cards import (
    code,
    describe_source,
    evaluation_description,
    launch_command,
    render_model_card,
    source_command,
)
from bcos_zoo.zoo.finetune import finetune
from bcos_zoo.zoo.recipes import RECIPES, Recipe, recipe_command


sys.path.insert(0, str(REPO / "scripts"))
import finetune as finetune_script  # noqa: E402


def fashion_like(evaluation_split: str = "test") -> DatasetSplits:
    return DatasetSplits([], [None] * 10_000, ["a", "b"], "zalando-datasets/fashion_mnist", evaluation_split)


def test_a_local_folder_is_named_by_its_architecture_not_its_path(tmp_path):
    folder = tmp_path / "vit-fashion-mnist" / "repo"
    save_hf_source(hf_vit(labels=3), folder, (0.5,) * 3, (0.5,) * 3)
    name, base_model = describe_source(str(folder))
    assert name == "a local ViTForImageClassification checkpoint" and base_model is None
    assert "repo" not in name and "fashion" not in name


def test_a_local_folder_with_a_model_card_is_named_by_it(tmp_path):
    folder = tmp_path / "repo"
    save_hf_source(hf_vit(labels=3), folder, (0.5,) * 3, (0.5,) * 3)
    (folder / "README.md").write_text("---\nmodel_name: vit-fashion-mnist\n---\n# A model\n")
    assert describe_source(str(folder)) == ("vit-fashion-mnist (a local checkpoint)", None)


def test_a_source_downloaded_from_the_hub_keeps_its_hub_id(tmp_path):
    timm_folder = tmp_path / "timm"
    timm_folder.mkdir()
    pretrained = {"hf_hub_id": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k", "mean": [0.5] * 3}
    (timm_folder / "config.json").write_text(json.dumps({"architecture": "vit_small", "pretrained_cfg": pretrained}))
    assert describe_source(str(timm_folder))[1] == "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"
    cached = tmp_path / "hub" / "models--google--vit-base-patch16-224" / "snapshots" / "abc123"
    save_hf_source(hf_vit(labels=3), cached, (0.5,) * 3, (0.5,) * 3)
    assert describe_source(str(cached)) == ("google/vit-base-patch16-224", "google/vit-base-patch16-224")
    assert describe_source("google/vit-base-patch16-224")[1] == "google/vit-base-patch16-224"


def test_card_links_a_hub_source_to_its_page_and_names_a_local_one_in_words(tmp_path):
    metrics = {"accuracy": 0.5, "source_accuracy": 0.4}
    hub = RECIPES["bcos-vit-fashion-mnist"].with_overrides(source="google/vit-base-patch16-224")
    card = render_model_card(hub, TASKS["classification"].card, "org/m", metrics, fashion_like(), 10_000).text
    link = "[`google/vit-base-patch16-224`](https://huggingface.co/google/vit-base-patch16-224)"
    assert f"B-cosification](https://arxiv.org/abs/2411.00715) of {link}:" in card
    assert f"| {link} (standard source) | 40.00% |" in card
    folder = tmp_path / "repo"
    save_hf_source(hf_vit(labels=3), folder, (0.5,) * 3, (0.5,) * 3)
    local = hub.with_overrides(source=str(folder))
    card = render_model_card(local, TASKS["classification"].card, "org/m", metrics, fashion_like(), 10_000).text
    assert "of a local ViTForImageClassification checkpoint:" in card
    assert "| a local ViTForImageClassification checkpoint (standard source) | 40.00% |" in card


def test_card_names_the_test_split_and_a_capped_evaluation():
    recipe = RECIPES["bcos-vit-fashion-mnist"]
    card = render_model_card(recipe, TASKS["classification"].card, "org/m", {"accuracy": 0.5}, fashion_like(), 10_000)
    assert "test split, 10,000 images" in card.text and "validation" not in card.text
    assert card.data.eval_results[0].dataset_split == "test"
    capped = render_model_card(recipe, TASKS["classification"].card, "org/m", {"accuracy": 0.5}, fashion_like(), 500)
    assert "the first 500 of the 10,000 images of the test split" in capped.text
    assert evaluation_description("validation", 7, 7) == "validation split, 7 images"


def test_card_model_index_gives_a_local_dataset_no_hub_dataset_id():
    recipe = RECIPES["bcos-vit-fashion-mnist"]
    local = DatasetSplits([], [None] * 10, ["a", "b"], "my_images")
    (result,) = render_model_card(
        recipe, TASKS["classification"].card, "org/m", {"accuracy": 0.5}, local, 10
    ).data.eval_results
    assert result.dataset_name == "my_images" and result.dataset_type == "imagefolder"
    (result,) = render_model_card(
        recipe, TASKS["classification"].card, "org/m", {"accuracy": 0.5}, fashion_like(), 10
    ).data.eval_results
    assert result.dataset_type == "zalando-datasets/fashion_mnist"


def test_card_names_a_held_out_part_of_a_split_as_such():
    data = replace(fashion_like("train"), held_out=0.1)
    recipe = RECIPES["bcos-vit-fashion-mnist"]
    card = render_model_card(recipe, TASKS["classification"].card, "org/m", {"accuracy": 0.5}, data, 10_000)
    assert "10,000 images held out of the train split (a seeded 10%)" in card.text
    assert card.data.eval_results[0].dataset_split == "train"
    capped = evaluation_description("train", 500, 10_000, held_out=0.1)
    assert capped == "the first 500 of the 10,000 images held out of the train split (a seeded 10%)"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_reproduce_command_rebuilds_the_recipe_with_its_overrides(name):
    recipe = replace(RECIPES[name], epochs=2.5, crop_scale=(0.3, 0.9), label_column=None, seed=7, precision="bf16")
    recipe = replace(recipe, max_train_samples=None, max_eval_samples=None, architecture=None)  # "none" on the line
    command = recipe_command(recipe)
    assert command.startswith(f"python scripts/finetune.py --recipe {name} ")
    arguments = finetune_script.parse_args(shlex.split(command)[2:])
    assert finetune_script.recipe_from_args(arguments) == recipe


def test_reproduce_command_of_a_recipe_outside_the_catalogue_names_everything():
    recipe = Recipe(name="mine", source="org/vit", dataset="./images", hub_model_id="me/mine", learning_rate=3e-4)
    arguments = finetune_script.parse_args(shlex.split(recipe_command(recipe))[2:])
    assert finetune_script.recipe_from_args(arguments) == recipe


def test_standard_source_gets_its_own_card(tmp_path):
    data = make_image_folder(tmp_path / "data")
    architecture = dict(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    recipe = RECIPES["vit-fashion-mnist"].with_overrides(
        dataset=str(data), architecture=architecture, max_steps=2, batch_size=8, save_steps=2
    )
    result = finetune(recipe, tmp_path / "out", device="cpu")
    card = ModelCard.load(result.repo_dir / "README.md")
    assert "trust_remote_code" not in card.text and "b-cos" not in card.data.tags
    assert card.data.eval_results[0].metric_value == pytest.approx(result.metrics["accuracy"], abs=1e-4)
    assert "--recipe vit-fashion-mnist" in card.text and "--max-steps 2" in card.text
    assert "trained from scratch on " in card.text


def test_reproduce_command_shows_no_absolute_local_path(tmp_path):
    recipe = Recipe(name="mine", source=str(tmp_path / "source"), dataset="./images", hub_model_id="me/mine")
    command = recipe_command(recipe)
    assert str(tmp_path) not in command and "<folder source>" in command and "./images" in command


def card_command(card: str) -> str:
    return card.split("Reproduce with `")[1].split("`")[0]


def test_card_states_the_processes_and_the_global_batch_and_launches_as_many():
    recipe = RECIPES["bcos-vit-fashion-mnist"].with_overrides(batch_size=4, gradient_accumulation_steps=3)
    card = render_model_card(recipe, TASKS["classification"].card, "org/m", {}, fashion_like(), 10, processes=2).text
    for row in ("processes (data-parallel) | 2", "batch size (per process) | 4", "gradient accumulation steps | 3"):
        assert f"| {row} |" in card
    assert "| global batch size | 24 |" in card  # 2 processes x 4 images x 3 accumulated steps
    command = shlex.split(card_command(card))
    assert command[:5] == ["accelerate", "launch", "--multi_gpu", "--num_processes", "2"]
    assert command[5] == "scripts/finetune.py"
    assert finetune_script.recipe_from_args(finetune_script.parse_args(command[6:])) == recipe
    single = render_model_card(recipe, TASKS["classification"].card, "org/m", {}, fashion_like(), 10, processes=1)
    assert card_command(single.text) == recipe_command(recipe) and "| global batch size | 12 |" in single.text


@pytest.mark.subprocess
def test_the_card_of_a_two_process_run_says_so_and_launches_two(tmp_path):
    import subprocess

    from training_testing import child_env, finetune_command, make_vit_source

    output = tmp_path / "ddp"
    source, data = make_vit_source(tmp_path / "source"), make_image_folder(tmp_path / "data", per_class=4)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = finetune_command(source, data, output, "--max-steps", "1", "--save-steps", "1", "--batch-size", "2")
    completed = subprocess.run(launcher + command[1:], capture_output=True, text=True, env=child_env(), timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    card = (output / "repo" / "README.md").read_text()
    assert "| processes (data-parallel) | 2 |" in card and "| global batch size | 4 |" in card
    assert card_command(card).startswith("accelerate launch --multi_gpu --num_processes 2 scripts/finetune.py ")


def test_a_clip_card_without_labels_shows_what_was_measured_and_no_empty_picture():
    """CLIP distillation on images alone measures only the cosine to the original embeddings: no accuracy table or
    metadata, and no picture link without a picture."""
    recipe = RECIPES["bcos-clip-vit-b32"].with_overrides(source="openai/clip-vit-base-patch32")
    card = render_model_card(
        recipe, TASKS["clip-distillation"].card, "org/m", {"embedding_cosine": 0.8156}, fashion_like(), 10
    )
    assert "![" not in card.text and "Left to right" not in card.text
    assert "Zero-shot top-1 accuracy" not in card.text and "| Model |" not in card.text
    assert (
        "Mean cosine between the model's image embeddings and the original CLIP's" in card.text
        and "0.8156" in card.text
    )
    assert card.data.metrics is None and not card.data.eval_results
    assert "the results table shows both" not in card.text and "which was not measured here" in card.text
    labelled = render_model_card(
        recipe,
        TASKS["clip-distillation"].card,
        "org/m",
        {"zero_shot_accuracy": 0.5, "embedding_cosine": 0.8},
        fashion_like(),
        10,
        example_image="examples/explanation_0.png",
    )
    assert (
        "## Results\n\n| Model | Zero-shot top-1 accuracy on" in labelled.text
        and "| `org/m` (this model) | 50.00% |" in labelled.text
    )
    assert "![Explanations](examples/explanation_0.png)" in labelled.text and labelled.data.metrics == ["accuracy"]


@pytest.mark.parametrize(
    ("task", "template"), [("standard-classification", "model_card.md"), ("classification", "standard_model_card.md")]
)
def test_a_built_in_template_is_the_card_of_what_the_task_trains(task, template):
    """A standard run named by --model/--dataset keeps the recipe's default template, the B-cos card; it gets the
    standard card, and a B-cos run never gets the standard one."""
    recipe = Recipe(
        name="run", source="org/vit", dataset="data", hub_model_id="org/run", task=task, card_template=template
    )
    fields = TASKS[task](recipe).card
    card = render_model_card(recipe, fields, "org/run", {"accuracy": 0.5}, fashion_like(), 10_000).text
    assert ("trust_remote_code" in card) == fields.bcos and ("model.explain" in card) == fields.bcos


@pytest.mark.parametrize(
    ("name", "weight", "claims"),  # objective, tag and table rows (the recipe's own summary aside)
    [
        ("bcos-resnet-decoys", {"guidance_weight": 0.0}, ("(model guidance)", "- model-guidance", "guidance weight")),
        ("bcos-resnet-e2kd-decoys", {"explanation_weight": 0.0}, ("e2KD: T^2", "- e2kd", "1 - cos")),
    ],
)
def test_a_card_claims_no_guidance_or_explanation_distillation_of_a_run_that_weighted_it_zero(name, weight, claims):
    recipe = RECIPES[name].with_overrides(**weight)
    card = render_model_card(recipe, TASKS[recipe.task](recipe).card, "org/run", {"accuracy": 0.5}, fashion_like(), 9)
    assert not [claim for claim in claims if claim in str(card)], str(card)  # the tags are in the metadata
    weighted = RECIPES[name].with_overrides(**{key: 0.5 for key in weight})
    fields = TASKS[recipe.task](weighted).card
    assert all(claim in str(render_model_card(weighted, fields, "org/run", {}, fashion_like(), 9)) for claim in claims)


def test_a_short_warm_up_and_a_short_run_are_stated_as_they_were():
    recipe = RECIPES["bcos-vit-fashion-mnist"].with_overrides(warmup_ratio=0.004)
    metrics = {"accuracy": 0.5, "train_seconds": 2.6}
    card = render_model_card(recipe, TASKS["classification"].card, "org/m", metrics, fashion_like(), 10_000).text
    assert "linear warm-up over 0.4% of steps" in card and "Training took 3 seconds in all." in card


def test_ctrl_c_under_accelerate_tells_the_main_process_to_resume_on_as_many_processes(monkeypatch):
    argv = ["--recipe", "bcos-vit-s", "--batch-size", "4"]
    assert finetune_script.resume_command(argv) == "continue with: " + recipe_command_line(argv)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    launch = "accelerate launch --multi_gpu --num_processes 2 scripts/finetune.py "
    assert finetune_script.resume_command(argv) == f"continue with: {launch}{shlex.join(argv)} --resume"
    monkeypatch.setenv("RANK", "1")
    assert finetune_script.resume_command(argv) == ""  # said once, by the main process


def recipe_command_line(argv: list[str]) -> str:
    return f"python scripts/finetune.py {shlex.join(argv)} --resume"


@pytest.mark.parametrize("task", ["classification", "standard-classification"])
def test_a_card_from_a_local_source_says_how_that_source_was_made(tmp_path, task):
    made = "python scripts/finetune.py --recipe vit-fashion-mnist --max-steps 3"
    (tmp_path / "README.md").write_text(
        f"# vit-fashion-mnist\n\nReproduce with `{made}` from the bcos_zoo repository.\n"
    )
    recipe = RECIPES["bcos-vit-fashion-mnist"].with_overrides(source=str(tmp_path), task=task)
    card = " ".join(render_model_card(recipe, TASKS[task].card, "org/m", {}, fashion_like(), 10).text.split())
    assert f"Its source, a local checkpoint, is the `repo/` folder of a run of `{made}` (made first;" in card
    hub = recipe.with_overrides(source="google/vit-base")
    assert "a run of" not in render_model_card(hub, TASKS[task].card, "org/m", {}, fashion_like(), 10).text


MARKDOWN = MarkdownIt("commonmark").enable("table")  # GitHub's and the Hub's reading of a card, tables included


@pytest.mark.parametrize("text", ["python x.py", "--summary 'a `b` c'", "``a", "a``", "`", "x ``` y ` z", " a "])
def test_a_code_span_shows_its_text_whole_backticks_included(text):
    html = MARKDOWN.render(f"see {code(text)} here")
    assert html == f"<p>see <code>{text}</code> here</p>\n"


@pytest.mark.parametrize("task", ["classification", "standard-classification"])
def test_a_command_with_backticks_is_read_back_from_its_card_as_it_was(tmp_path, task):
    recipe = RECIPES["bcos-vit-fashion-mnist"].with_overrides(task=task, summary="A ViT for `my` ``data``.")
    card = render_model_card(recipe, TASKS[task].card, "org/m", {}, fashion_like(), 10).text
    (tmp_path / "README.md").write_text(card)
    assert source_command(str(tmp_path)) == recipe_command(recipe)
    assert "--summary" in shlex.split(source_command(str(tmp_path)))


@pytest.mark.parametrize("task", ["classification", "standard-classification"])
def test_a_pipe_in_a_dataset_name_stays_inside_its_table_cell(task):
    data = replace(fashion_like(), name="cats|dogs")
    recipe = RECIPES["bcos-vit-fashion-mnist"].with_overrides(task=task, dataset="cats|dogs")
    metrics = {"accuracy": 0.5}
    html = MARKDOWN.render(render_model_card(recipe, TASKS[task].card, "org/m", metrics, data, 10).text)
    assert "<th>Top-1 accuracy on cats|dogs (the first 10 of the 10,000 images of the test split)</th>" in html
    assert "<td><code>org/m</code> (this model)</td>\n<td>50.00%</td>" in html


def test_a_card_from_a_local_teacher_says_how_that_teacher_was_made(tmp_path):
    made = "python scripts/finetune.py --recipe bcos-vit-canvas-teacher"
    (tmp_path / "README.md").write_text(f"Reproduce with `{made}` from the bcos_zoo repository.\n")
    recipe = RECIPES["bcos-vit-e2kd-decoys"].with_overrides(teacher=str(tmp_path))
    card = render_model_card(recipe, get_task(recipe).card, "org/m", {}, fashion_like(), 10).text
    assert f"Its teacher, a local checkpoint, is the `repo/` folder of a run of `{made}`" in " ".join(card.split())


def test_the_launch_of_a_sharded_run_leaves_its_accelerate_config_in_charge(monkeypatch):
    command = "python scripts/finetune.py --recipe bcos-vit-b"
    assert launch_command(command, 8).startswith("accelerate launch --multi_gpu --num_processes 8 scripts/")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # --multi_gpu would override the config's FSDP
    assert launch_command(command, 8).startswith("accelerate launch --config_file '<its accelerate config>' --num_proc")


def test_a_distilled_model_s_card_states_what_the_distillation_measured_and_cites_e2kd():
    recipe = RECIPES["bcos-vit-e2kd-decoys"]
    metrics = {"accuracy": 0.8, "teacher_accuracy": 0.9, "agreement": 0.85, "explanation_cosine": 0.71234}
    text = render_model_card(recipe, get_task(recipe).card, "org/m", metrics, fashion_like(), 10).text
    assert "\nThe teacher's top-1 accuracy on the same images: 90.00%.\n" in text
    assert "\nTop-1 agreement of the model with its teacher: 85.00%.\n" in text
    assert "to the teacher's, both for the teacher's top-1 class: 0.7123." in text
    assert "Energy pointing game" not in text  # not measured: no boxes
    assert "title   = {Good Teachers Explain: Explanation-Enhanced Knowledge Distillation}" in text
    plain = render_model_card(
        replace(recipe, explanation_weight=0.0),
        get_task(replace(recipe, explanation_weight=0.0)).card,
        "org/m",
        metrics,
        fashion_like(),
        10,
    )
    assert "Good Teachers Explain" not in plain.text  # plain KD is not e2KD


def test_a_guided_model_s_card_states_its_localisation_and_cites_model_guidance():
    recipe = RECIPES["bcos-vit-guided-decoys"]
    metrics = {"accuracy": 0.8, "epg": 0.61, "iou": 0.25}
    text = render_model_card(recipe, get_task(recipe).card, "org/m", metrics, fashion_like(), 10).text
    assert "guided attributions in the images' boxes: 61.00%." in text and "with the boxes: 25.00%." in text
    assert "Studying How to Efficiently and Effectively Guide Models with Explanations" in text
    teacher = RECIPES["bcos-vit-canvas-teacher"]  # trained without guidance: a plain classifier's card
    assert (
        "Guide Models"
        not in render_model_card(teacher, get_task(teacher).card, "org/m", metrics, fashion_like(), 10).text
    )
