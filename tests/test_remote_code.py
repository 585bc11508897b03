"""A saved folder loads with plain transformers (trust_remote_code=True) in a process that never imports bcos_zoo."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sources import hf_vit

from bcos_zoo import BcosViTForImageClassification


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bcos_vit")
    model = BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=4), b=2.0, bias="remove").eval()
    model.save_pretrained(folder)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    save_file({"x": x, "logits": logits}, folder / "expected.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / "cat.png")
    return folder, model


def test_folder_holds_code_processor_and_auto_map(saved):
    folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_bcos_vit.BcosViTConfig",
        "AutoModel": "modeling_bcos_vit.BcosViTForImageClassification",
        "AutoModelForImageClassification": "modeling_bcos_vit.BcosViTForImageClassification",
    }
    for name in ("modeling_bcos_vit.py", "configuration_bcos_vit.py", "bcos_layers.py", "explanation.py"):
        assert (folder / name).exists(), name
    assert (folder / "model.safetensors").exists()
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["do_normalize"] is False and processor["size"] == {"height": 32, "width": 32}


@pytest.mark.subprocess
def test_auto_classes_and_pipeline_work_without_bcos_zoo(saved, clean_python):
    folder, model = saved
    out = clean_python(
        f"""
        import json, torch
        from PIL import Image
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForImageClassification, pipeline

        folder = {str(folder)!r}
        data = load_file(folder + "/expected.safetensors")
        classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            diffs = [(m(pixel_values=data["x"]).logits - data["logits"]).abs().max().item() for m in (classifier, base)]
        explanation = classifier.explain(data["x"])
        completeness = (explanation.contributions.sum((1, 2)) + explanation.bias - explanation.target_logits).abs()
        pipe = pipeline("image-classification", model=folder, trust_remote_code=True)
        predictions = pipe(Image.open(folder + "/cat.png"), top_k=4)
        print(json.dumps(dict(
            diffs=diffs,
            module=type(classifier).__module__,
            completeness=completeness.max().item(),
            rgba=list(explanation.rgba.shape),
            predictions=predictions,
        )))
        """,
        cwd=folder,
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert max(result["diffs"]) <= 1e-6
    assert result["module"].startswith("transformers_modules.")
    assert result["completeness"] <= 1e-5
    assert result["rgba"] == [3, 32, 32, 4]
    labels = [p["label"] for p in result["predictions"]]
    assert sorted(labels) == sorted(model.config.id2label.values())
    assert sum(p["score"] for p in result["predictions"]) == pytest.approx(1.0, abs=1e-4)
