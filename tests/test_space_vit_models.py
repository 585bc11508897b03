"""The B-cos explainer Space (spaces/bcos-vit-explainer) with the model kinds beyond a 3-channel softmax classifier:
a one-channel ViT converted from timm, a multi-label model, a single-logit model and a regression model."""

import numpy as np
import pytest
import torch
from gradio_client import handle_file
from PIL import Image
from space_testing import photo, save_one_channel_vit_folder, save_vit_folder, start_space, stop_space
from transformers import AutoImageProcessor, pipeline

from bcos_zoo import BcosViTForImageClassification


# each test talks to a Space app running in its own process
pytestmark = pytest.mark.subprocess

# kind of model -> (labels, config.problem_type)
PROBLEMS = {
    "multi-label": (4, "multi_label_classification"),
    "single logit": (1, None),
    "regression": (1, "regression"),
}


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The app with the one-channel ViT as its default model and the others offered; the folder of each."""
    workdir = tmp_path_factory.mktemp("vit_models_space")
    folders = {"one channel": workdir / "one-channel"}
    save_one_channel_vit_folder(folders["one channel"])
    for kind, (labels, problem_type) in PROBLEMS.items():
        folders[kind] = workdir / kind.replace(" ", "-")
        save_vit_folder(folders[kind], labels=labels, problem_type=problem_type)
    others = ",".join(str(folders[kind]) for kind in PROBLEMS)
    running = start_space("bcos-vit-explainer", folders["one channel"], workdir, MODEL_IDS=others)
    yield running, folders
    stop_space(running)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    photo(seed=5).save(path)
    return path


def test_a_one_channel_model_explains_a_colour_photo_as_greyscale(space, client, image_file):
    _, folders = space
    folder = folders["one channel"]
    _, seen, _, _, summary, picked = client.predict(handle_file(str(image_file)), str(folder), api_name="/predict")
    grey = Image.open(image_file).convert("L")
    pixel_values = AutoImageProcessor.from_pretrained(folder)(images=grey, return_tensors="pt")["pixel_values"]
    model = BcosViTForImageClassification.from_pretrained(folder).eval()
    expected = model.explain(pixel_values)
    assert picked == model.config.id2label[int(expected.target[0])]
    assert f"logit {float(expected.target_logits[0]):.4f}" in summary
    view = np.asarray(Image.open(seen).convert("RGB")).astype(int)
    scale = view.shape[0] // pixel_values.shape[-1]
    assert (view[..., 0] == view[..., 1]).all() and (view[..., 1] == view[..., 2]).all()  # shown grey
    assert np.abs(view[::scale, ::scale, 0] - (pixel_values[0, 0].numpy() * 255).round()).max() <= 1


@pytest.mark.parametrize("kind", PROBLEMS)
def test_scores_are_those_of_the_transformers_image_classification_pipeline(space, client, image_file, kind):
    """A regression's logits as they are, a sigmoid for a multi-label model or a single logit, else a softmax."""
    _, folders = space
    top5, *_ = client.predict(handle_file(str(image_file)), str(folders[kind]), api_name="/predict")
    classify = pipeline("image-classification", model=str(folders[kind]), trust_remote_code=True)
    with torch.no_grad():
        expected = {entry["label"]: entry["score"] for entry in classify(Image.open(image_file).convert("RGB"))}
    shown = {entry["label"]: entry["confidence"] for entry in top5["confidences"]}
    assert shown == pytest.approx(expected, abs=1e-5)
