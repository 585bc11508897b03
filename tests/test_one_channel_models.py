"""A one-channel (greyscale) model through what turns images into its pixels and draws its explanations: conversion
without the source's processor, the post-hoc baselines' source, a CLIP tower of one channel, the panels and the card.
(Training and evaluation on greyscale pixels: tests/test_classification_task.py.)"""

import numpy as np
import torch
from sources import hf_vit
from tiny_models import TEXT, TOWER

from bcos_zoo import BcosCLIPConfig, BcosCLIPModel, BcosViTForImageClassification
from bcos_zoo.data.datasets import DatasetSplits
from bcos_zoo.data.preprocessing import model_channels
from bcos_zoo.evaluation.baselines import load_standard_classifier
from bcos_zoo.training import TASKS
from bcos_zoo.visualize import CAPTION, TILE, explanation_panel
from bcos_zoo.zoo.cards import render_model_card
from bcos_zoo.zoo.recipes import get_recipe


def grey_vit():
    source = hf_vit(labels=3)
    source.config.num_channels = 1
    return type(source)(source.config).eval()


def test_a_greyscale_vit_without_its_processor_converts_exactly_with_transformers_default():
    source = grey_vit()
    model = BcosViTForImageClassification.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = source.double()(pixel_values=(x - 0.5) / 0.5).logits
        torch.testing.assert_close(model.double()(pixel_values=x).logits, expected)


def test_the_baselines_take_a_greyscale_source_in_memory_with_transformers_default():
    source = grey_vit()
    classifier = load_standard_classifier(source)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), source(pixel_values=(x - 0.5) / 0.5).logits)


def test_a_clip_model_takes_as_many_channels_as_its_image_tower():
    model = BcosCLIPModel(BcosCLIPConfig(vision_config={**TOWER, "num_channels": 1}, text_config=TEXT))
    assert model_channels(model) == 1


def test_a_greyscale_model_s_card_converts_images_to_greyscale_and_does_not_offer_image_classification():
    model = BcosViTForImageClassification.from_pretrained_standard(grey_vit(), image_mean=(0.5,), image_std=(0.5,))
    data = DatasetSplits([], [None] * 10, ["a", "b", "c"], "org/data", "test")
    recipe, card = get_recipe("bcos-vit-fashion-mnist"), TASKS["classification"].card
    text = render_model_card(recipe, card, "org/m", {"accuracy": 0.5}, data, 10, config=model.config).text
    assert '.convert("L")' in text and '.convert("RGB")' not in text
    assert 'It also works with `pipeline("image-classification"' not in text and "image-explanation" in text
    colour = render_model_card(recipe, card, "org/m", {"accuracy": 0.5}, data, 10).text
    assert '.convert("RGB")' in colour and 'It also works with `pipeline("image-classification"' in colour


def test_a_greyscale_explanation_is_drawn_on_grey_where_its_white_evidence_shows():
    """Its colour rendering is black or white (the weights on x and 1 - x have opposite signs): on white, the evidence
    of bright pixels would vanish."""
    model = BcosViTForImageClassification.from_pretrained_standard(grey_vit(), image_mean=(0.5,), image_std=(0.5,))
    x = torch.rand(1, 1, 32, 32)
    explanation = model.eval().explain(x)
    panel = np.asarray(explanation_panel(x, explanation))
    factor = -(-TILE // 32)  # each pixel drawn as a square of this side
    size = 32 * factor
    top, left = panel.shape[0] - CAPTION - size, size + 6  # the explanation tile: beside the input, above the caption
    tile = panel[top : top + size : factor, left : left + size : factor]
    transparent = (explanation.rgba[0, ..., 3] == 0).numpy()
    assert transparent.any() and (tile[transparent] == 128).all()
    shown = (explanation.rgba[0, ..., 3] > 0.5).numpy()
    assert (tile[shown] != 128).any()  # the evidence itself is drawn


def test_a_greyscale_source_whose_processor_does_not_normalise_converts_and_is_a_baselines_source(tmp_path):
    from transformers import ViTImageProcessor

    source = grey_vit()
    source.save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}, do_normalize=False).save_pretrained(tmp_path)
    model = BcosViTForImageClassification.from_pretrained_standard(str(tmp_path), b=1.0, bias="keep").eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = source(pixel_values=x).logits
        torch.testing.assert_close(model(pixel_values=x).logits, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(load_standard_classifier(str(tmp_path))(x), expected)


def test_a_greyscale_standard_model_s_card_converts_images_to_greyscale():
    data = DatasetSplits([], [None] * 10, ["a", "b", "c"], "org/data", "test")
    recipe, card = get_recipe("vit-fashion-mnist"), TASKS["standard-classification"].card
    text = render_model_card(recipe, card, "org/m", {"accuracy": 0.5}, data, 10, config=grey_vit().config).text
    assert '.convert("L")' in text and '.convert("RGB")' not in text
