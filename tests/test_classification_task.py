"""The classification task trains a B-cos classifier of any family: ViT, ResNet or DenseNet, converted or from
scratch, with a new head when the data has another number of classes."""

import numpy as np
import pytest
import torch
from cnn_sources import hf_resnet, save_timm, timm_cnn
from PIL import Image
from sources import hf_vit, save_hf_source
from transformers import ConvNextImageProcessor, ViTImageProcessor

from bcos_zoo import BcosDenseNetForImageClassification, BcosResNetForImageClassification, BcosViTForImageClassification
from bcos_zoo.families import bcos_classifier_class
from bcos_zoo.training import get_task
from bcos_zoo.zoo.recipes import Recipe


def recipe(source: str, **fields) -> Recipe:
    return Recipe(name="run", source=source, dataset="unused", hub_model_id="org/run", **fields)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    save_hf_source(hf_vit(labels=3), root / "vit", (0.5,) * 3, (0.5,) * 3)
    hf_resnet(labels=3).save_pretrained(root / "hf_resnet")
    save_timm(timm_cnn("resnet18", labels=3), root / "timm_resnet18")
    save_timm(timm_cnn("densenet121", labels=3), root / "timm_densenet121")
    return root


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("vit", BcosViTForImageClassification),
        ("hf_resnet", BcosResNetForImageClassification),
        ("timm_resnet18", BcosResNetForImageClassification),
        ("timm_densenet121", BcosDenseNetForImageClassification),
    ],
)
def test_a_standard_source_becomes_the_bcos_classifier_of_its_family(sources, folder, expected):
    assert bcos_classifier_class(str(sources / folder)) is expected
    model = get_task(recipe(str(sources / folder))).build_model(["a", "b", "c"])
    assert type(model) is expected and model.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_an_unsupported_source_names_the_supported_families(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "swin"}')
    with pytest.raises(ValueError, match="not a source of any B-cos family"):
        bcos_classifier_class(str(tmp_path))


def test_a_new_head_keeps_every_backbone_weight(sources):
    converted = BcosResNetForImageClassification.from_pretrained_standard(str(sources / "timm_resnet18"))
    model = get_task(recipe(str(sources / "timm_resnet18"))).build_model(["a", "b", "c", "d", "e", "f"])
    assert model.config.num_labels == 6 and model.classifier.weight.shape[0] == 6
    for name, value in converted.state_dict().items():
        if not name.startswith("classifier."):
            torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_a_cnn_from_scratch_is_named_by_its_model_type():
    architecture = dict(model_type="bcos_resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    model = get_task(recipe("scratch", architecture=architecture)).build_model(["a", "b"])
    assert type(model) is BcosResNetForImageClassification and model.config.num_labels == 2
    logits = model(pixel_values=torch.rand(2, 3, 24, 24)).logits
    assert logits.shape == (2, 2)


def test_a_cnn_fine_tunes_end_to_end_with_its_card_and_examples(sources, tmp_path):
    from huggingface_hub import ModelCard
    from test_finetune import held_out_accuracy
    from training_testing import make_image_folder

    from bcos_zoo.zoo.finetune import finetune

    data = make_image_folder(tmp_path / "data", size=40)
    run = Recipe(
        name="bcos-tiny-resnet",
        source=str(sources / "timm_resnet18"),
        dataset=str(data),
        hub_model_id="org/bcos-tiny-resnet",
        max_steps=3,
        batch_size=8,
        save_steps=3,
    )
    result = finetune(run, tmp_path / "out", device="cpu")
    card = ModelCard.load(result.repo_dir / "README.md")
    assert "B-cos](https://arxiv.org/abs/2306.10898) ResNet" in card.text and "resnet" in card.data.tags
    assert "source_accuracy" in result.metrics
    assert result.metrics["accuracy"] == pytest.approx(held_out_accuracy(result.repo_dir, data))
    assert list((result.repo_dir / "examples").glob("*.png"))
    reloaded = BcosResNetForImageClassification.from_pretrained(result.repo_dir)
    assert reloaded.config.id2label[0] == "blue"


def test_a_standard_resnet_trained_here_is_b_cosified_exactly(tmp_path):
    from PIL import Image
    from training_testing import make_image_folder
    from transformers import AutoModelForImageClassification

    from bcos_zoo.zoo.finetune import finetune

    data = make_image_folder(tmp_path / "data", size=32)
    architecture = dict(model_type="resnet", image_size=32, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    run = Recipe(
        name="resnet-tiny",
        source="scratch",
        dataset=str(data),
        hub_model_id="org/resnet-tiny",
        task="standard-classification",
        architecture=architecture,
        max_steps=3,
        batch_size=8,
        save_steps=3,
        agc_clip=0.0,
    )
    result = finetune(run, tmp_path / "out", device="cpu")
    standard_task = get_task(run)
    standard = AutoModelForImageClassification.from_pretrained(result.repo_dir).eval()
    converted = BcosResNetForImageClassification.from_pretrained_standard(
        str(result.repo_dir), b=1.0, bias="keep"
    ).eval()
    image = Image.open(next((data / "red").iterdir()))
    with torch.no_grad():
        expected = standard(pixel_values=standard_task.eval_transform(standard)(image)[None]).logits
        pixel_values = converted.default_image_processor()(image, return_tensors="pt").pixel_values
        logits = converted(pixel_values=pixel_values).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


SHUFFLED = ["class_2", "class_0", "class_1"]  # the sources' classes, named class_i, in another order


def logits_by_name(model, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        logits = model.eval()(pixel_values=pixel_values).logits
    return {model.config.id2label[index]: logits[:, index] for index in range(logits.shape[1])}


@pytest.mark.parametrize(
    ("folder", "task", "bcos_source"),
    [
        ("vit", "classification", False),
        ("hf_resnet", "classification", False),
        ("vit", "classification", True),
        ("hf_resnet", "standard-classification", False),
    ],
)
def test_a_source_with_the_data_classes_in_another_order_keeps_each_class_score(
    sources, folder, task, bcos_source, tmp_path
):
    source = str(sources / folder)
    if task == "standard-classification":
        from transformers import AutoModelForImageClassification

        reference = AutoModelForImageClassification.from_pretrained(source)
    else:
        reference = bcos_classifier_class(source).from_pretrained_standard(source)
    if bcos_source:
        reference.save_pretrained(tmp_path / "bcos")
        source = str(tmp_path / "bcos")
    model = get_task(recipe(source, task=task)).build_model(SHUFFLED)
    assert model.config.id2label == dict(enumerate(SHUFFLED))
    pixel_values = torch.rand(2, 3, 32, 32)
    expected, scores = logits_by_name(reference, pixel_values), logits_by_name(model, pixel_values)
    for name in SHUFFLED:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


def test_a_source_naming_other_classes_keeps_its_class_order_with_a_warning(sources, caplog):
    source = str(sources / "vit")
    reference = bcos_classifier_class(source).from_pretrained_standard(source)
    model = get_task(recipe(source)).build_model(["a", "b", "c"])
    assert "are not the data's ['a', 'b', 'c'] by name" in caplog.text
    torch.testing.assert_close(model.classifier.weight, reference.classifier.weight, rtol=0, atol=0)


@pytest.mark.parametrize("folder", ["vit", "hf_resnet"])
def test_standard_training_gives_a_source_with_other_classes_a_new_head_for_the_data(sources, folder):
    from transformers import AutoModelForImageClassification

    source = AutoModelForImageClassification.from_pretrained(sources / folder)
    model = get_task(recipe(str(sources / folder), task="standard-classification")).build_model(["cat", "dog"])
    assert type(model) is type(source) and source.config.num_labels == 3
    assert model.config.id2label == {0: "cat", 1: "dog"} and model.config.label2id == {"cat": 0, "dog": 1}
    head = [name for name in model.state_dict() if name.startswith("classifier.")]
    assert head and all(model.state_dict()[name].shape[0] == 2 for name in head)
    for name, value in source.state_dict().items():
        if not name.startswith("classifier."):
            torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    with torch.no_grad():
        assert model.eval()(pixel_values=torch.rand(1, 3, 32, 32)).logits.shape == (1, 2)


def test_the_standard_source_is_measured_on_the_data_classes_matched_by_name(tmp_path):
    from huggingface_hub import ModelCard
    from training_testing import make_image_folder
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from bcos_zoo.data.datasets import load_dataset_splits
    from bcos_zoo.zoo.finetune import finetune

    data = make_image_folder(tmp_path / "data")
    architecture = dict(model_type="vit", image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1)
    standard = Recipe(
        name="standard",
        source="scratch",
        dataset=str(data),
        hub_model_id="org/standard",
        task="standard-classification",
        architecture=dict(architecture, num_attention_heads=2, intermediate_size=32),
        max_steps=20,
        batch_size=8,
        save_steps=100,
        learning_rate=3e-3,
        agc_clip=0.0,
    )
    trained = finetune(standard, tmp_path / "standard", device="cpu").repo_dir
    # the same classifier with its classes numbered otherwise: red, blue, green instead of the folders' blue, green, red
    source = AutoModelForImageClassification.from_pretrained(trained)
    order = [2, 0, 1]
    with torch.no_grad():
        source.classifier.weight.copy_(source.classifier.weight[order])
        source.classifier.bias.copy_(source.classifier.bias[order])
    source.config.id2label = {new: source.config.id2label[old] for new, old in enumerate(order)}
    source.config.label2id = {name: index for index, name in source.config.id2label.items()}
    source.save_pretrained(tmp_path / "renumbered")
    processor = AutoImageProcessor.from_pretrained(trained)
    processor.save_pretrained(tmp_path / "renumbered")

    splits = load_dataset_splits(str(data))
    images, labels = zip(*splits.validation)
    with torch.no_grad():
        predicted = source.eval()(**processor(list(images), return_tensors="pt")).logits.argmax(dim=1).tolist()
    by_name = sum(source.config.id2label[p] == splits.class_names[y] for p, y in zip(predicted, labels)) / len(labels)
    by_index = sum(p == y for p, y in zip(predicted, labels)) / len(labels)
    assert by_name != by_index  # the run would tell them apart

    run = Recipe(name="b", source=str(tmp_path / "renumbered"), dataset=str(data), hub_model_id="org/b", max_steps=1)
    result = finetune(run, tmp_path / "bcos", device="cpu")
    assert result.metrics["source_accuracy"] == pytest.approx(by_name)
    card = ModelCard.load(result.repo_dir / "README.md").text
    assert f"(standard source) | {100 * by_name:.2f}% |" in card


@pytest.mark.parametrize(
    ("source_classes", "reason"),
    [
        (["a", "b", "c"], "its classes ['a', 'b', 'c'] are not the data's ['blue', 'green', 'red']"),
        (["blue", "green", "red", "white"], "it has 4 classes and the data 3"),
    ],
)
def test_a_source_of_other_classes_is_left_out_of_the_results_with_the_reason(tmp_path, source_classes, reason):
    from huggingface_hub import ModelCard
    from training_testing import make_image_folder

    from bcos_zoo.zoo.finetune import finetune

    model = hf_vit(labels=len(source_classes))
    model.config.id2label = dict(enumerate(source_classes))
    save_hf_source(model, tmp_path / "source", (0.5,) * 3, (0.5,) * 3)
    data = make_image_folder(tmp_path / "data", per_class=4)
    run = Recipe(name="b", source=str(tmp_path / "source"), dataset=str(data), hub_model_id="org/b", max_steps=1)
    result = finetune(run, tmp_path / "out", device="cpu")
    assert "source_accuracy" not in result.metrics and result.metrics["source_not_measured"] == reason
    card = ModelCard.load(result.repo_dir / "README.md").text
    assert "(standard source) |" not in card
    assert f"The standard source is not in the table: {reason}." in card


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_standard_training_resizes_as_transformers_processors_of_the_family_do(family):
    """A standard ViT squashes bilinearly (ViTImageProcessor's defaults), a standard ResNet crops all of a square
    image bicubically (ConvNextImageProcessor's at crop_pct 1): the pixels its runs were trained and evaluated on."""
    model = hf_vit(image=32) if family == "vit" else hf_resnet()
    model.config.image_size = 32
    processor = get_task(recipe("scratch", task="standard-classification")).image_processor(model)
    if family == "vit":
        reference = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    else:
        reference = ConvNextImageProcessor(
            size={"shortest_edge": 32}, crop_pct=1.0, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    image = Image.fromarray((torch.rand(40, 70, 3) * 255).byte().numpy())
    ours, theirs = (p(image, return_tensors="pt").pixel_values for p in (processor, reference))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2.1 / 255 / 0.5)  # PIL's rounding: a level or two


@pytest.mark.parametrize("folder", ["hf_resnet", "vit"])
def test_a_standard_model_s_loss_is_scaled_for_gradient_accumulation_as_a_b_cos_model_s(sources, folder, tmp_path):
    """transformers' ResNet takes ``**kwargs`` but not ``num_items_in_batch``: the Trainer must divide its batch mean
    by the accumulation steps itself, or two accumulated batches of 4 step twice as far as one batch of 8."""
    from transformers import Trainer, TrainingArguments

    model = get_task(recipe(str(sources / folder), task="standard-classification")).build_model(["cat", "dog"])
    arguments = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", gradient_accumulation_steps=2
    )
    trainer = Trainer(model=model, args=arguments)
    trainer.current_gradient_accumulation_steps = 2  # as the training loop sets it: one of two accumulated batches
    batch = {
        "pixel_values": torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        "labels": torch.tensor([0, 1, 1, 0]),
    }
    trainer.training_step(model, batch, num_items_in_batch=torch.tensor(8))
    accumulated = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    (model(**batch).loss / 2).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(accumulated[name], p.grad, msg=name)


def test_a_greyscale_source_fine_tunes_and_is_evaluated_in_greyscale(tmp_path):
    """A one-channel source (B-cosified to a one-channel model): training, evaluation and the example pictures take
    the colour images of the data in greyscale, as the model's pipeline does."""
    from training_testing import make_image_folder

    from bcos_zoo.data.preprocessing import model_transform
    from bcos_zoo.zoo.finetune import finetune

    source = hf_vit(labels=3)
    source.config.num_channels = 1
    source.config.id2label = dict(enumerate(["blue", "green", "red"]))  # the data's classes: its accuracy is measured
    source.config.label2id = {name: index for index, name in source.config.id2label.items()}
    source = type(source)(source.config)
    save_hf_source(source, tmp_path / "grey", (0.5,), (0.5,))
    data = make_image_folder(tmp_path / "data", size=32)
    run = Recipe(
        name="grey",
        source=str(tmp_path / "grey"),
        dataset=str(data),
        hub_model_id="org/grey",
        max_steps=2,
        batch_size=8,
    )
    result = finetune(run, tmp_path / "out", device="cpu")
    assert {"accuracy", "source_accuracy"} <= result.metrics.keys()
    assert list((result.repo_dir / "examples").glob("*.png"))
    model = BcosViTForImageClassification.from_pretrained(result.repo_dir)
    with Image.open(next((data / "red").glob("*.png"))) as image:  # 32 px: the processor's resize keeps it
        pixels, grey = model_transform(model)(image), np.asarray(image.convert("L"), dtype=np.float32) / 255
    assert pixels.shape == (1, 32, 32)
    torch.testing.assert_close(pixels[0], torch.from_numpy(grey), atol=1e-6, rtol=0)


def test_a_greyscale_standard_model_trains_here_on_greyscale_pixels(tmp_path):
    from training_testing import make_image_folder

    from bcos_zoo.zoo.finetune import finetune

    data = make_image_folder(tmp_path / "data", size=16)
    architecture = dict(model_type="vit", image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1)
    run = Recipe(
        name="grey-standard",
        source="scratch",
        dataset=str(data),
        hub_model_id="org/grey-standard",
        task="standard-classification",
        architecture=dict(architecture, num_attention_heads=2, intermediate_size=32, num_channels=1),
        max_steps=2,
        batch_size=8,
    )
    result = finetune(run, tmp_path / "out", device="cpu")
    assert 0 <= result.metrics["accuracy"] <= 1
    processor = ViTImageProcessor.from_pretrained(result.repo_dir)
    assert list(processor.image_mean) == [0.5] and list(processor.image_std) == [0.5]
