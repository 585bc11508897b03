"""Saved B-cos CNN folders load with plain transformers (trust_remote_code=True) in a process without bcos_zoo."""

import json

import numpy as np
import pytest
import torch
from cnn_sources import (
    MEAN,
    STD,
    hf_resnet,
    single_thread,  # noqa: F401
    torchvision_densenet121,
)
from PIL import Image
from safetensors.torch import save_file

from bcos_zoo import BcosDenseNetForImageClassification, BcosResNetForImageClassification


FAMILIES = {
    "resnet": (lambda: hf_resnet("bottleneck", labels=4), BcosResNetForImageClassification),
    "densenet": (lambda: torchvision_densenet121(labels=4), BcosDenseNetForImageClassification),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def saved(request, tmp_path_factory):
    build, cls = FAMILIES[request.param]
    folder = tmp_path_factory.mktemp(f"bcos_{request.param}")
    model = cls.from_pretrained_standard(
        build(), b=2.0, bias="remove", image_mean=MEAN, image_std=STD, image_size=32, logit_bias=0.0
    )
    model.eval().save_pretrained(folder)
    x = torch.rand(3, 3, 36, 44)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    save_file({"x": x, "logits": logits}, folder / "expected.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / "cat.png")
    return request.param, folder, model


def test_folder_holds_code_processor_and_auto_map(saved):
    family, folder, model = saved
    config = json.loads((folder / "config.json").read_text())
    classifier = f"modeling_bcos_{family}.{type(model).__name__}"
    assert config["auto_map"]["AutoConfig"] == f"configuration_bcos_{family}.{type(model.config).__name__}"
    assert config["auto_map"]["AutoModelForImageClassification"] == classifier
    assert config["auto_map"]["AutoModel"] == classifier
    for name in (f"modeling_bcos_{family}.py", f"configuration_bcos_{family}.py", "bcos_cnn.py"):
        assert (folder / name).exists(), name
    assert (folder / "model.safetensors").exists()
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["do_normalize"] is False and processor["crop_size"] == {"height": 32, "width": 32}


@pytest.mark.subprocess
def test_auto_classes_and_pipeline_work_without_bcos_zoo(saved, clean_python):
    _, folder, model = saved
    out = clean_python(
        f"""
        import json, torch
        torch.set_num_threads(1)
        from PIL import Image
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForImageClassification, pipeline

        folder = {str(folder)!r}
        data = load_file(folder + "/expected.safetensors")
        classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            diffs = [(m(pixel_values=data["x"]).logits - data["logits"]).abs().max().item() for m in (classifier, base)]
        explanation = classifier.double().explain(data["x"].double())
        completeness = (explanation.contributions.sum((1, 2)) - explanation.target_logits).abs()
        completeness = (completeness / explanation.target_logits.abs()).max().item()
        pipe = pipeline("image-classification", model=folder, trust_remote_code=True)
        predictions = pipe(Image.open(folder + "/cat.png"), top_k=4)
        print(json.dumps(dict(
            diffs=diffs,
            module=type(classifier).__module__,
            completeness=completeness,
            rgba=list(explanation.rgba.shape),
            predictions=predictions,
        )))
        """,
        cwd=folder,
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert max(result["diffs"]) <= 1e-6
    assert result["module"].startswith("transformers_modules.")
    assert result["completeness"] <= 1e-6
    assert result["rgba"] == [3, 36, 44, 4]
    labels = [p["label"] for p in result["predictions"]]
    assert sorted(labels) == sorted(model.config.id2label.values())
    assert sum(p["score"] for p in result["predictions"]) == pytest.approx(1.0, abs=1e-4)
