"""CLIP distillation through the Trainer: the B-cos image tower learns the frozen original's embeddings."""

import pytest
import torch
from clip_testing import IMAGE_SIZE, save_source
from safetensors.torch import load_file
from training_testing import make_image_folder

from bcos_zoo import BcosCLIPModel
from bcos_zoo.data.datasets import TransformedImages, load_dataset_splits
from bcos_zoo.training import get_task
from bcos_zoo.training.clip_distillation import mean_embedding_cosine
from bcos_zoo.zoo.finetune import finetune
from bcos_zoo.zoo.recipes import Recipe


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    save_source(root / "source")
    recipe = Recipe(
        name="bcos-clip-tiny",
        source=str(root / "source"),
        dataset=str(make_image_folder(root / "data", size=IMAGE_SIZE)),
        hub_model_id="org/bcos-clip-tiny",
        task="clip-distillation",
        max_steps=15,
        batch_size=8,
        learning_rate=2e-3,
        save_steps=15,
    )
    return recipe, finetune(recipe, root / "out", device="cpu")


def test_distillation_brings_the_image_embeddings_closer_to_the_original(distilled):
    recipe, result = distilled
    data = load_dataset_splits(recipe.dataset)
    task = get_task(recipe)
    untrained = task.build_model(data.class_names)
    validation = TransformedImages(data.validation, task.eval_transform(untrained))
    before = mean_embedding_cosine(untrained, task.teacher, validation, batch_size=8)
    assert result.metrics["embedding_cosine"] > before


def test_distillation_leaves_the_text_tower_as_it_was(distilled):
    recipe, result = distilled
    source = load_file(f"{recipe.source}/model.safetensors")
    trained = load_file(result.repo_dir / "model.safetensors")
    text_weights = [name for name in source if name.startswith("text_model.")]
    assert text_weights
    for name in text_weights:
        torch.testing.assert_close(trained[name], source[name], rtol=0, atol=0, msg=name)


def test_distilled_repo_is_a_zero_shot_clip_with_a_card(distilled):
    from transformers import AutoProcessor

    recipe, result = distilled
    model = BcosCLIPModel.from_pretrained(result.repo_dir).eval()
    processor = AutoProcessor.from_pretrained(result.repo_dir)
    x = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    explanation = model.explain(x, text=["red", "blue"])
    with torch.no_grad():
        logits = model(**processor.tokenizer(["red", "blue"], padding=True, return_tensors="pt"), pixel_values=x)
    torch.testing.assert_close(explanation.logits * model.logit_scale.exp(), logits.logits_per_image)
    # zero-shot accuracy: the held-out images classified among the class prompts by the saved model and processor,
    # and by the original CLIP with its own
    from transformers import CLIPModel

    data = load_dataset_splits(recipe.dataset)
    images, labels = zip(*data.validation)
    prompts = [f"a photo of a {name}." for name in data.class_names]
    for key, folder, clip in (
        ("zero_shot_accuracy", result.repo_dir, model),
        ("source_zero_shot_accuracy", recipe.source, CLIPModel.from_pretrained(recipe.source).eval()),
    ):
        clip_processor = AutoProcessor.from_pretrained(folder)
        pixel_values = clip_processor(images=list(images), return_tensors="pt").pixel_values
        with torch.no_grad():
            text = clip_processor.tokenizer(prompts, padding=True, return_tensors="pt")
            predicted = clip(**text, pixel_values=pixel_values).logits_per_image.argmax(dim=1)
        assert result.metrics[key] == pytest.approx(float((predicted == torch.tensor(labels)).double().mean())), key
    assert (result.repo_dir / "README.md").read_text().count("zero-shot-image-classification") >= 1


def test_the_task_reads_its_source_once_and_trains_a_copy_of_it(tmp_path, monkeypatch):
    """The teacher, the student's B-cosification and the evaluated source come from one read of the checkpoint; the
    student owns its weights (training it leaves the frozen teacher as it was)."""
    from transformers import CLIPModel

    save_source(tmp_path / "source")
    reads = []
    from_pretrained = CLIPModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        reads.append(args)
        return from_pretrained(cls, *args, **kwargs)

    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(counting))
    recipe = Recipe(
        name="bcos-clip-tiny",
        source=str(tmp_path / "source"),
        dataset="unused",
        hub_model_id="org/m",
        task="clip-distillation",
    )
    task = get_task(recipe)
    student = task.build_model(["red", "blue"])
    source = task.source_model()
    assert len(reads) == 1
    assert student.tokenizer is not None and source.tokenizer is not None
    teacher_weights = {p.data_ptr() for p in task.teacher.parameters()}
    assert not teacher_weights & {p.data_ptr() for p in student.parameters()}
    assert not teacher_weights & {p.data_ptr() for p in source.parameters()}
