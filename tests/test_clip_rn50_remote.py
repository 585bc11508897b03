"""A saved B-cos CLIP ResNet stands on its own: the Auto classes and the zero-shot pipeline load it as remote code in
an interpreter that cannot import bcos_zoo, with the tokenizer saved beside it."""

import json

import pytest
import torch
from open_clip_sources import IMAGE_SIZE, PROMPTS, calibrate, images, reduced_rn

from bcos_zoo import BcosCLIPModel, BcosCLIPResNetVisionModel, BcosCLIPVisionModel


pytest.importorskip("open_clip")


@pytest.mark.subprocess
def test_saved_clip_resnets_load_as_remote_code_in_a_clean_interpreter(tmp_path, clean_python):
    source = reduced_rn()
    clip = calibrate(BcosCLIPModel.from_pretrained_standard(source), torch.rand(8, 3, IMAGE_SIZE, IMAGE_SIZE))
    vision = BcosCLIPVisionModel.from_pretrained_standard(source).eval()
    assert type(vision) is BcosCLIPResNetVisionModel
    clip.save_pretrained(tmp_path / "bcos-clip-rn")
    vision.save_pretrained(tmp_path / "bcos-clip-rn-vision")
    config = json.loads((tmp_path / "bcos-clip-rn" / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "bcos_clip_resnet"
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_bcos_clip_resnet.BcosCLIPModel"
    assert (tmp_path / "bcos-clip-rn" / "tokenizer.json").is_file()

    x = images(2)
    inputs = clip.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = {
            "x": x,
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
            "logits_per_image": clip(**inputs, pixel_values=x).logits_per_image,
            "image_embeds": vision(pixel_values=x).image_embeds,
        }
    torch.save(expected, tmp_path / "expected.pt")

    stdout = clean_python(
        """
        import numpy as np
        import torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor, AutoTokenizer, pipeline

        expected = torch.load("expected.pt")
        clip = AutoModel.from_pretrained("bcos-clip-rn", trust_remote_code=True).eval()
        vision = AutoModel.from_pretrained("bcos-clip-rn-vision", trust_remote_code=True).eval()
        assert type(clip).__name__ == "BcosCLIPModel" and type(vision).__name__ == "BcosCLIPResNetVisionModel"
        assert type(clip.vision_model).__name__ == "BcosCLIPResNetModel", type(clip.vision_model)
        assert not type(clip).__module__.startswith("bcos_zoo"), type(clip).__module__
        tokenizer = AutoTokenizer.from_pretrained("bcos-clip-rn")
        inputs = tokenizer(["a photo of a cat.", "A DIAGRAM of   two dogs!"], padding=True, return_tensors="pt")
        assert inputs["input_ids"].tolist() == expected["input_ids"][:2, : inputs["input_ids"].shape[1]].tolist()
        with torch.no_grad():
            logits = clip(
                input_ids=expected["input_ids"],
                attention_mask=expected["attention_mask"],
                pixel_values=expected["x"],
            ).logits_per_image
            embeds = vision(pixel_values=expected["x"]).image_embeds
        assert torch.allclose(logits, expected["logits_per_image"], atol=1e-5), (logits, expected["logits_per_image"])
        assert torch.allclose(embeds, expected["image_embeds"], atol=1e-6)
        explanation = clip.explain(expected["x"], text=["a photo of a cat.", "A DIAGRAM of   two dogs!"])
        assert explanation.contributions.shape == (2, 64, 64)
        total = explanation.contributions.double().sum((1, 2)) + explanation.bias.double()
        assert torch.allclose(total, explanation.target_logits.double(), atol=1e-6)
        scaled = explanation.logits * clip.logit_scale.exp()
        assert torch.allclose(scaled, expected["logits_per_image"][:, :2], atol=1e-5), scaled

        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8))
        labels = ["cat", "dog", "car"]
        classifier = pipeline("zero-shot-image-classification", model="bcos-clip-rn", trust_remote_code=True)
        results = classifier(image, candidate_labels=labels)
        scores = {r["label"]: r["score"] for r in results}
        assert sorted(scores) == sorted(labels) and abs(sum(scores.values()) - 1) < 1e-5, results
        processor = AutoProcessor.from_pretrained("bcos-clip-rn")
        prompts = [f"This is a photo of {label}." for label in labels]
        inputs = processor(text=prompts, images=image, padding=True, return_tensors="pt")
        assert inputs["pixel_values"].shape == (1, 3, 64, 64) and 0 <= inputs["pixel_values"].min()
        with torch.no_grad():
            probs = clip(**inputs).logits_per_image.softmax(-1)[0]
        for label, prob in zip(labels, probs.tolist()):
            assert abs(scores[label] - prob) < 1e-5, (label, scores[label], prob)
        print("remote ok", results[0]["label"])
        """,
        cwd=tmp_path,
    )
    assert "remote ok" in stdout
