"""Model guidance trains: a few steps on a toy task with a decoy lower the energy loss and raise EPG; the task runs
end to end through finetune (boxes, Trainer, evaluation, card)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

from bcos_zoo import BcosViTConfig, BcosViTForImageClassification
from bcos_zoo.data.boxes import BoxedImages, BoxResizeTransform, collate_boxed
from bcos_zoo.evaluation.scores import energy_pointing_scores
from bcos_zoo.training import get_task
from bcos_zoo.training.explanation_losses import attributions, energy_loss
from bcos_zoo.training.guided_classification import GuidedTrainer, attribution_iou
from bcos_zoo.zoo.finetune import finetune
from bcos_zoo.zoo.recipes import Recipe


def toy_items(count: int = 16, seed: int = 0) -> list:
    """16 px images: a white bar (vertical for class 0, horizontal for class 1) in one corner, its box, and a
    class-coloured decoy square in the opposite corner."""
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        label = index % 2
        picture = np.zeros((16, 16, 3), dtype=np.uint8)
        corner = int(rng.integers(0, 2))
        x0, y0 = (1, 1) if corner == 0 else (9, 9)
        if label == 0:
            picture[y0 : y0 + 6, x0 + 2 : x0 + 4] = 255
        else:
            picture[y0 + 2 : y0 + 4, x0 : x0 + 6] = 255
        dx, dy = (10, 10) if corner == 0 else (2, 2)
        picture[dy : dy + 4, dx : dx + 4] = (255, 0, 0) if label == 0 else (0, 0, 255)
        items.append((Image.fromarray(picture), label, [[x0, y0, x0 + 6, y0 + 6]]))
    return items


def tiny_vit() -> BcosViTForImageClassification:
    torch.manual_seed(0)
    config = BcosViTConfig(
        image_size=16, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=2,
    )  # fmt: skip
    return BcosViTForImageClassification(config)


@pytest.mark.slow
def test_a_few_guided_steps_lower_the_energy_loss_and_raise_epg():
    model = tiny_vit()
    batch = collate_boxed(BoxedImages(toy_items(), BoxResizeTransform(16)))
    pixels, labels, masks = batch["pixel_values"], batch["labels"], batch["box_masks"]

    def measure() -> tuple[float, float]:
        model.eval()
        contributions = model.explain(pixels, target=labels).contributions
        model.train()
        energy = float(energy_loss(contributions, masks).mean())
        return energy, float(energy_pointing_scores(contributions, masks).mean())

    energy_before, epg_before = measure()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(12):
        loss = model(pixel_values=pixels, labels=labels).loss
        loss = loss + 0.05 * energy_loss(attributions(model, pixels, labels), masks).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    energy_after, epg_after = measure()
    assert energy_after < energy_before - 0.05, (energy_before, energy_after)
    assert epg_after > epg_before + 0.05, (epg_before, epg_after)


def test_guided_trainer_adds_the_energy_loss_only_for_boxed_images(tmp_path):
    from transformers import TrainingArguments

    model = tiny_vit().train()
    batch = collate_boxed(BoxedImages(toy_items(), BoxResizeTransform(16)))
    arguments = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    plain = GuidedTrainer(model=model, args=arguments, guidance_weight=0.0)
    guided = GuidedTrainer(model=model, args=arguments, guidance_weight=0.5)
    base = float(plain.compute_loss(model, batch).detach())
    energy = energy_loss(attributions(model, batch["pixel_values"], batch["labels"]), batch["box_masks"])
    expected = base + 0.5 * float(energy.detach().sum())
    assert float(guided.compute_loss(model, batch).detach()) == pytest.approx(expected, rel=1e-5)
    unboxed = dict(batch, has_boxes=torch.zeros_like(batch["has_boxes"]))
    assert float(guided.compute_loss(model, unboxed).detach()) == pytest.approx(base, rel=1e-6)


class GradientsBeforeTheStep(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("task", ["guided", "unguided"])
def test_splitting_a_batch_into_accumulation_steps_leaves_the_guided_update_alone(tmp_path, task):
    """One optimiser step on the same 8 images, as one batch of 8 or two accumulated batches of 4: the same
    gradient, the guidance term included (lambda sums over an optimiser step's images)."""
    from transformers import TrainingArguments

    def gradients(batch_size: int, accumulation: int) -> dict:
        arguments = TrainingArguments(
            output_dir=str(tmp_path / f"{batch_size}"), use_cpu=True, report_to="none", max_steps=1,
            per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, max_grad_norm=0,
            dataloader_num_workers=0, disable_tqdm=True, seed=0, remove_unused_columns=False,
        )  # fmt: skip
        grab = GradientsBeforeTheStep()
        trainer = GuidedTrainer(
            model=tiny_vit().train(), args=arguments, guidance_weight=0.5 if task == "guided" else 0.0,
            train_dataset=BoxedImages(toy_items(8), BoxResizeTransform(16)), data_collator=collate_boxed,
            callbacks=[grab],
        )  # fmt: skip
        trainer.train()
        return grab.gradients

    whole, accumulated = gradients(8, 1), gradients(4, 2)
    assert whole.keys() == accumulated.keys() and whole
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-7, msg=name)


def test_guided_trainer_applies_the_chosen_loss_to_the_chosen_attribution(tmp_path):
    from transformers import TrainingArguments

    from bcos_zoo.training.explanation_losses import attributions, l1_loss
    from bcos_zoo.training.guided_classification import check_guidance

    model = tiny_vit().train()
    batch = collate_boxed(BoxedImages(toy_items(), BoxResizeTransform(16)))
    batch["has_boxes"][::2] = False
    arguments = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    layer = "bcos_vit.layers.0"
    guided = GuidedTrainer(
        model=model, args=arguments, guidance_weight=0.3, guidance_loss="l1", attribution="ixg", guidance_layer=layer
    )
    base = float(model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss.detach())
    boxed = batch["has_boxes"]
    maps = attributions(model, batch["pixel_values"][boxed], batch["labels"][boxed], "ixg", layer)
    expected = base + 0.3 * float(l1_loss(maps, batch["box_masks"][boxed]).sum().detach())
    assert float(guided.compute_loss(model, batch).detach()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="hidden layer"):
        check_guidance("energy", "gradcam", "input")
    with pytest.raises(ValueError, match="guidance_loss"):
        check_guidance("dice", "bcos", "input")


def test_attribution_iou():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    maps = torch.zeros(2, 4, 4)
    maps[0, :2, :2] = 1.0  # exactly the box
    maps[1, 0, 0], maps[1, 3, 3] = 1.0, 1.0  # one of four box pixels, one outside
    torch.testing.assert_close(attribution_iou(maps, masks), torch.tensor([1.0, 1 / 5], dtype=torch.float64))


def guided_scores_by_hand(repo, count: int = 8, canvas: int = 48) -> dict[str, float]:
    """Accuracy, EPG and IoU of the saved model on the first ``count`` test canvases, recomputed from its logits and
    its contributions to each label: the positive share inside the box, and the IoU of the box with the pixels whose
    positive contribution is at least half the image's largest."""
    from transformers import AutoModelForImageClassification

    from bcos_zoo.data.decoys import decoy_splits
    from bcos_zoo.training.guided_classification import processor_box_transform

    model = AutoModelForImageClassification.from_pretrained(repo).eval()
    items = [decoy_splits(canvas=canvas).validation[index] for index in range(count)]
    transform = processor_box_transform(model)
    pixels, masks = (torch.stack(parts) for parts in zip(*(transform(image, boxes) for image, _, boxes in items)))
    labels = torch.tensor([label for _, label, _ in items])
    with torch.no_grad():
        predicted = model(pixel_values=pixels).logits.argmax(dim=1)
    positive = model.explain(pixels, target=labels).contributions.double().clamp_min(0)
    epg, iou = [], []
    for attribution, mask in zip(positive, masks):
        epg.append(float(attribution[mask].sum() / attribution.sum()))
        low, high = attribution.min(), attribution.max()
        hot = (attribution - low) / (high - low) >= 0.5
        iou.append(float((hot & mask).sum() / (hot | mask).sum()))
    return {
        "accuracy": float((predicted == labels).double().mean()),
        "epg": sum(epg) / count,
        "iou": sum(iou) / count,
    }


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_guided_classification_runs_through_finetune(tmp_path):
    recipe = Recipe(
        name="guided-test",
        source="scratch",
        dataset="fashion-mnist-decoys-48",
        hub_model_id="test/guided",
        task="guided-classification",
        architecture=dict(
            image_size=24, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32,
        ),
        max_steps=2,
        batch_size=8,
        max_train_samples=16,
        max_eval_samples=8,
        guidance_weight=0.01,
        box_fraction=0.5,
        save_steps=100,
    )  # fmt: skip
    result = finetune(recipe, tmp_path / "run", device="cpu")
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert metrics == result.metrics and metrics["boxed_images"] == 8
    expected = guided_scores_by_hand(tmp_path / "run" / "repo")
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=1e-5)
    card = (tmp_path / "run" / "repo" / "README.md").read_text()
    assert "| guidance weight lambda | 0.01 |" in card and "| guided layer | input |" in card
    assert "| share of training images with boxes | 0.5 |" in card


def test_guidance_on_a_dataset_without_boxes_is_refused_before_training(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "b").mkdir()
    recipe = Recipe(
        name="guided-plain", source="scratch", dataset=str(tmp_path / "data"), hub_model_id="test/guided",
        task="guided-classification", guidance_weight=0.01, max_steps=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="needs images with object boxes.*would never act"):
        finetune(recipe, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()
    unguided = get_task(replace(recipe, guidance_weight=0.0))
    with pytest.raises(ValueError, match="no images"):
        unguided.load_data()  # without guidance, the plain data are read (here: two empty class folders)


def test_guidance_refuses_a_greyscale_model_before_training(tmp_path):
    config = BcosViTConfig(image_size=16, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    BcosViTForImageClassification(replace_config(config, num_channels=1, num_labels=2)).save_pretrained(tmp_path / "m")
    recipe = Recipe(
        name="g", source=str(tmp_path / "m"), dataset="unused", hub_model_id="org/g", task="guided-classification"
    )
    with pytest.raises(ValueError, match=r"trains colour \(three-channel\) models, and this model takes 1-channel"):
        get_task(recipe).build_model(["a", "b"])


def replace_config(config, **fields):
    config.update(fields)
    return config


def test_boxes_lie_on_the_upright_image_as_its_pixels_do(tmp_path):
    """An image stored on its side with an EXIF rotation: the pixels are read upright, and so is the box drawn on
    what a viewer shows (the red upper half)."""
    from bcos_zoo.training.guided_classification import processor_box_transform

    model = BcosViTForImageClassification(
        BcosViTConfig(image_size=32, patch_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    )
    stored = np.zeros((32, 48, 3), dtype=np.uint8)  # 48 wide as stored, 48 tall as shown
    stored[:, :24, 0] = 255  # red on the left as stored: on top once turned a quarter clockwise (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "turned.png", exif=exif)
    with Image.open(tmp_path / "turned.png") as image:
        pixels, mask = processor_box_transform(model)(image, [[0, 0, 32, 24]])  # squashed to 32 x 32
    red = pixels[0] > 0.5
    assert red[:16].all() and not red[16:].any()
    assert torch.equal(mask, red)
