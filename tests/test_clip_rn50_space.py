"""The CLIP explainer Space serves a B-cos CLIP ResNet as it serves the ViT ones: started as a Space starts it
(remote code, no bcos_zoo), its scores are the model's and each prompt's explanation adds up to its cosine."""

import re

import pytest
import torch
from gradio_client import Client, handle_file
from open_clip_sources import IMAGE_SIZE, calibrate, reduced_rn
from space_testing import photo, start_space, stop_space
from transformers import AutoImageProcessor

from bcos_zoo import BcosCLIPModel


pytest.importorskip("open_clip")
PROMPTS = ["a photo of a cat", "a photo of a dog", "a red car at night"]
CAPTION = re.compile(
    r"(?P<prompt>.+): cosine (?P<cosine>-?\d+\.\d+) = pixels (?P<pixels>-?\d+\.\d+) \+ bias (?P<bias>\S+)"
)


@pytest.mark.subprocess
def test_the_clip_space_scores_and_explains_with_a_clip_resnet(tmp_path):
    model = calibrate(BcosCLIPModel.from_pretrained_standard(reduced_rn()), torch.rand(8, 3, IMAGE_SIZE, IMAGE_SIZE))
    model.save_pretrained(tmp_path / "bcos-clip-rn")
    image_file = tmp_path / "photo.png"
    photo(size=(80, 64), seed=3).save(image_file)
    running = start_space("bcos-clip-explainer", tmp_path / "bcos-clip-rn", tmp_path)
    try:
        client = Client(running.url, verbose=False)
        scores, _, gallery, _ = client.predict(
            handle_file(str(image_file)), "\n".join(PROMPTS), False, api_name="/explain"
        )
    finally:
        stop_space(running)
    from PIL import Image

    pixel_values = AutoImageProcessor.from_pretrained(tmp_path / "bcos-clip-rn")(
        images=Image.open(image_file), return_tensors="pt"
    )["pixel_values"]
    cosines = model.explain(pixel_values, text=PROMPTS).logits[0]
    expected = (model.logit_scale.exp() * cosines).softmax(-1)
    got = {entry["label"]: entry["confidence"] for entry in scores["confidences"]}
    assert got == pytest.approx(dict(zip(PROMPTS, expected.tolist())), abs=1e-5)
    assert len(gallery) == len(PROMPTS)
    for k, item in enumerate(gallery):
        fields = CAPTION.fullmatch(item["caption"])
        assert fields and fields["prompt"] == PROMPTS[k], item["caption"]
        assert float(fields["cosine"]) == pytest.approx(float(cosines[k]), abs=2e-4)
        assert float(fields["pixels"]) == pytest.approx(float(fields["cosine"]), abs=2e-4)  # no constants: bias 0
