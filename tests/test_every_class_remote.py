"""Every model class of every registered family saves a folder that loads, through each Auto class its auto_map
names, as remote code in a process that cannot import bcos_zoo, and computes what the saved model computed, with
transformers' output flags (return_dict=False, output_hidden_states)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import TINY_CLASSIFIERS

from bcos_zoo.families import FAMILIES


def test_every_registered_family_has_a_tiny_model():
    assert set(TINY_CLASSIFIERS) == set(FAMILIES)


def built_classes():
    """(family, class, model) for the classifier and backbone of each family, the backbone on the classifier's
    config (CLIP: its vision config)."""
    for name, family in FAMILIES.items():
        torch.manual_seed(0)
        classifier = TINY_CLASSIFIERS[name]().eval()
        config = classifier.config
        if not isinstance(config, family.backbone.config_class):
            config = config.vision_config
        yield name, classifier
        yield name, family.backbone(config).eval()


def first_output(model, x):
    """What a user reads first: the logits or embeddings (a CLIP image-text model: its image embeddings)."""
    if type(model).__name__ == "BcosCLIPModel":
        return model.get_image_features(pixel_values=x).pooler_output
    return model(pixel_values=x, return_dict=False)[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("every_class")
    folders = []
    for index, (family, model) in enumerate(built_classes()):
        folder = root / f"{index}_{family}_{type(model).__name__}"
        model.save_pretrained(folder)
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            save_file({"x": x, "out": first_output(model, x).contiguous()}, folder / "expected.safetensors")
        folders.append(str(folder))
    return folders


def test_each_folder_names_the_class_it_holds(saved):
    for folder in saved:
        config = json.loads(Path(folder, "config.json").read_text())
        model_classes = {key: value for key, value in config["auto_map"].items() if key != "AutoConfig"}
        assert model_classes, folder
        assert len(set(model_classes.values())) == 1, model_classes  # one class, answering to each Auto class
        assert folder.endswith(next(iter(model_classes.values())).split(".")[1]), folder


@pytest.mark.subprocess
def test_every_class_reloads_through_each_auto_class_as_remote_code(saved, clean_python, tmp_path):
    out = clean_python(
        f"""
        import json, torch, transformers
        from pathlib import Path
        from safetensors.torch import load_file
        torch.set_num_threads(1)
        results = []
        for folder in {saved!r}:
            data = load_file(folder + "/expected.safetensors")
            auto_map = json.load(open(folder + "/config.json"))["auto_map"]
            for auto_name in sorted(set(auto_map) - {{"AutoConfig"}}):
                model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True).eval()
                with torch.no_grad():
                    if "CLIPModel" in type(model).__name__:
                        out = model.get_image_features(pixel_values=data["x"]).pooler_output
                        states = model.get_image_features(pixel_values=data["x"], output_hidden_states=True)
                    else:
                        out = model(pixel_values=data["x"], return_dict=False)[0]
                        states = model(pixel_values=data["x"], output_hidden_states=True)
                resaved = folder + "_resaved_" + auto_name  # a model loaded as remote code saves again
                model.save_pretrained(resaved)
                results.append(dict(
                    folder=folder, auto=auto_name, cls=type(model).__name__,
                    resaved_code=sorted(f.name for f in Path(resaved).glob("*.py")),
                    resaved_config=json.load(open(resaved + "/config.json")),
                    from_remote_code=type(model).__module__.startswith("transformers_modules"),
                    diff=(out - data["out"]).abs().max().item(),
                    hidden_states=len(states.hidden_states or ()),
                ))
        print(json.dumps(results))
        """,
        cwd=tmp_path,
        timeout=600,
    )
    results = json.loads(out.strip().splitlines()[-1])
    assert {r["folder"] for r in results} == set(saved)
    for r in results:
        assert r["from_remote_code"], r
        assert r["diff"] <= 1e-5, r
        assert r["hidden_states"] >= 2, r  # the embedding and at least one block or stage
        original = json.loads(Path(r["folder"], "config.json").read_text())
        assert r["resaved_code"] == sorted(f.name for f in Path(r["folder"]).glob("*.py")), r["auto"]
        for key in ("auto_map", "custom_pipelines", "model_type"):
            assert r["resaved_config"].get(key) == original.get(key), (r["folder"], r["auto"], key)
