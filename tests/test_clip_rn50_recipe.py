"""The ``bcos-clip-rn50`` recipe, the B-cosification paper's CLIP, run end to end on Fashion-MNIST images from a
reduced open_clip RN50 in open_clip's Hub layout: distillation, the zero-shot accuracy its card reports (the source's
as open_clip itself scores it), the saved repo."""

import pytest
import torch
from open_clip_sources import normalized, reduced_config, reduced_rn, save_open_clip_folder
from safetensors.torch import load_file

from bcos_zoo import BcosCLIPModel, BcosCLIPResNetModel
from bcos_zoo.conversion.open_clip import _text_state
from bcos_zoo.data.datasets import limit, load_dataset_splits
from bcos_zoo.zoo.finetune import finetune
from bcos_zoo.zoo.recipes import get_recipe


open_clip = pytest.importorskip("open_clip")


def test_the_paper_s_clip_recipe():
    recipe = get_recipe("bcos-clip-rn50")
    assert (recipe.task, recipe.source, recipe.b, recipe.bias) == (
        "clip-distillation",
        "timm/resnet50_clip.openai",  # OpenAI's RN50 in open_clip's Hub layout
        2.0,
        "remove",
    )
    assert (recipe.epochs, recipe.learning_rate, recipe.batch_size, recipe.warmup_ratio) == (90.0, 1e-4, 256, 0.0)
    assert recipe.agc_clip == 0.01 and "B-cosification paper" in recipe.summary


@pytest.mark.slow
def test_the_recipe_distils_a_clip_resnet_on_fashion_mnist_and_reports_zero_shot_accuracy(tmp_path, fashion_mnist):
    source = reduced_rn(quick_gelu=True)
    folder = save_open_clip_folder(source, tmp_path / "rn50", reduced_config(quick_gelu=True))
    recipe = get_recipe("bcos-clip-rn50").with_overrides(
        source=str(folder),
        dataset="fashion-mnist",
        label_column="label",
        max_steps=2,
        batch_size=8,
        max_train_samples=16,
        max_eval_samples=16,
        save_steps=2,
    )
    result = finetune(recipe, tmp_path / "out", device="cpu")
    metrics = result.metrics
    assert {"zero_shot_accuracy", "source_zero_shot_accuracy", "embedding_cosine"} <= set(metrics)

    # the source's zero-shot accuracy is open_clip's own, on the pixels of the saved processor
    from transformers import AutoProcessor

    data = load_dataset_splits("fashion-mnist")
    images, labels = zip(*limit(data.validation, 16))
    pixels = AutoProcessor.from_pretrained(result.repo_dir)(images=list(images), return_tensors="pt").pixel_values
    prompts = [f"a photo of a {name}." for name in data.class_names]
    with torch.no_grad():
        logits, _ = source.get_logits(normalized(pixels), open_clip.get_tokenizer("RN50")(prompts))
    expected = float((logits.argmax(1) == torch.tensor(labels)).double().mean())
    assert metrics["source_zero_shot_accuracy"] == pytest.approx(expected)

    model = BcosCLIPModel.from_pretrained(result.repo_dir)
    assert isinstance(model.vision_model, BcosCLIPResNetModel) and model.config.vision_config.b == 2.0
    trained = load_file(result.repo_dir / "model.safetensors")
    for name, value in _text_state(source.state_dict()).items():  # the text tower, projection and scale as they were
        torch.testing.assert_close(trained[name], value, rtol=0, atol=0, msg=name)
    card = (result.repo_dir / "README.md").read_text()
    assert "zero-shot-image-classification" in card and f"{100 * metrics['zero_shot_accuracy']:.2f}%" in card
    assert "--recipe bcos-clip-rn50" in card
