"""Saved B-cos CLIP folders stand on their own: AutoModel and the zero-shot pipeline load them as remote code."""

import json

import pytest
import torch
from clip_testing import PROMPTS, byte_level_tokenizer, images, save_source

from bcos_zoo import BcosCLIPModel, BcosCLIPVisionModel


@pytest.mark.subprocess
def test_saved_folders_load_as_remote_code_in_a_clean_interpreter(tmp_path, clean_python):
    save_source(tmp_path / "source")
    clip = BcosCLIPModel.from_pretrained_standard(tmp_path / "source").eval()
    vision = BcosCLIPVisionModel.from_pretrained_standard(tmp_path / "source").eval()
    clip.save_pretrained(tmp_path / "bcos-clip")
    vision.save_pretrained(tmp_path / "bcos-clip-vision")

    config = json.loads((tmp_path / "bcos-clip" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_bcos_clip_vit.BcosCLIPModel"  # the module of its tower
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_bcos_clip_vit.BcosCLIPModel"
    processor = json.loads((tmp_path / "bcos-clip" / "processor_config.json").read_text())
    assert processor["image_processor"]["do_normalize"] is False

    x = images(2)
    inputs = byte_level_tokenizer()(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = {
            "x": x,
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
            "logits_per_image": clip(**inputs, pixel_values=x).logits_per_image,
            "image_embeds": vision(x).image_embeds,
        }
    torch.save(expected, tmp_path / "expected.pt")

    stdout = clean_python(
        """
        import numpy as np
        import torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor, pipeline

        expected = torch.load("expected.pt")
        clip = AutoModel.from_pretrained("bcos-clip", trust_remote_code=True).eval()
        vision = AutoModel.from_pretrained("bcos-clip-vision", trust_remote_code=True).eval()
        assert type(clip).__name__ == "BcosCLIPModel", type(clip)
        assert type(vision).__name__ == "BcosCLIPVisionModel", type(vision)
        assert not type(clip).__module__.startswith("bcos_zoo"), type(clip).__module__
        with torch.no_grad():
            logits = clip(
                input_ids=expected["input_ids"],
                attention_mask=expected["attention_mask"],
                pixel_values=expected["x"],
            ).logits_per_image
            embeds = vision(pixel_values=expected["x"]).image_embeds
        assert torch.allclose(logits, expected["logits_per_image"], atol=1e-5), (logits, expected["logits_per_image"])
        assert torch.allclose(embeds, expected["image_embeds"], atol=1e-5)
        explanation = clip.explain(expected["x"], text=["a photo of a cat", "a photo of a dog"])
        assert explanation.contributions.shape == (2, 32, 32)
        # the explained cosines, times the logit scale, are the zero-shot logits of the same two prompts
        scaled = explanation.logits * clip.logit_scale.exp()
        assert torch.allclose(scaled, expected["logits_per_image"][:, :2], atol=1e-5), scaled

        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
        labels = ["cat", "dog", "car"]
        classifier = pipeline("zero-shot-image-classification", model="bcos-clip", trust_remote_code=True)
        results = classifier(image, candidate_labels=labels)
        scores = {r["label"]: r["score"] for r in results}
        assert sorted(scores) == sorted(labels), results
        assert abs(sum(scores.values()) - 1) < 1e-5, results

        processor = AutoProcessor.from_pretrained("bcos-clip")
        prompts = [f"This is a photo of {label}." for label in labels]
        inputs = processor(text=prompts, images=image, padding=True, return_tensors="pt")
        assert 0 <= inputs["pixel_values"].min() and inputs["pixel_values"].max() <= 1
        with torch.no_grad():
            probs = clip(**inputs).logits_per_image.softmax(-1)[0]
        for label, prob in zip(labels, probs.tolist()):
            assert abs(scores[label] - prob) < 1e-5, (label, scores[label], prob)
        print("remote ok", results[0]["label"])
        """,
        cwd=tmp_path,
    )
    assert "remote ok" in stdout


@pytest.mark.subprocess
def test_a_folder_saved_without_a_tokenizer_loads_as_remote_code_with_none_and_no_config_warning(
    tmp_path, clean_python
):
    """The tokenizer lookup reads the model's own config, not config.json as a tokenizer's (a model type transformers
    does not know there, which it warned about)."""
    save_source(tmp_path / "source")
    model = BcosCLIPModel.from_pretrained_standard(tmp_path / "source")
    model.tokenizer = None
    model.save_pretrained(tmp_path / "bcos-clip")
    stdout = clean_python(
        """
        import io
        import logging
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging
        log = io.StringIO()
        transformers_logging.add_handler(logging.StreamHandler(log))
        model = AutoModel.from_pretrained("bcos-clip", trust_remote_code=True)
        print("tokenizer:", model.tokenizer, "log:", repr(log.getvalue()))
        """,
        cwd=tmp_path,
    )
    assert "tokenizer: None" in stdout and "You are using a model of type" not in stdout, stdout


@pytest.mark.subprocess
def test_a_clip_loaded_at_a_pinned_revision_explains_with_that_revision_s_tokenizer(tmp_path):
    """A later commit on main that changes the tokenizer must not change what a pinned model embeds its prompts with
    (``explain(text=...)``), nor what it saves."""
    import subprocess
    import sys
    import textwrap

    from fake_hub import FakeHub
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    save_source(tmp_path / "source")
    BcosCLIPModel.from_pretrained_standard(tmp_path / "source").save_pretrained(tmp_path / "bcos-clip")
    pinned = {path.name: path.read_bytes() for path in (tmp_path / "bcos-clip").iterdir() if path.is_file()}
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}  # the same symbols in reverse order: other ids
    for suffix in ("", "</w>"):
        vocab |= {
            symbol + suffix: len(vocab) + index for index, symbol in enumerate(sorted(ByteLevel.alphabet())[::-1])
        }
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=64).save_pretrained(tmp_path / "later")
    later = {name: (tmp_path / "later" / name).read_bytes() for name in ("tokenizer.json", "tokenizer_config.json")}
    code = """
        import sys
        sys.modules["bcos_zoo"] = None
        from transformers import AutoModel, AutoTokenizer
        model = AutoModel.from_pretrained("org/bcos-clip", revision="{sha}", trust_remote_code=True)
        pinned = AutoTokenizer.from_pretrained("org/bcos-clip", revision="{sha}")
        assert model.tokenizer("a cat").input_ids == pinned("a cat").input_ids, (model.tokenizer, pinned)
        print("same tokenizer")
    """
    with FakeHub() as hub:
        first = hub.seed("org/bcos-clip", pinned)
        hub.seed("org/bcos-clip", later)
        (tmp_path / "home").mkdir()
        completed = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code.format(sha=first.sha))],
            cwd=tmp_path / "home",
            env=hub.env(home=tmp_path / "home", PYTHONPATH=""),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert completed.returncode == 0 and "same tokenizer" in completed.stdout, completed.stderr[-3000:]


@pytest.mark.subprocess
def test_a_private_clip_loaded_with_a_token_reads_its_tokenizer_with_that_token(tmp_path):
    """``token=`` reaches the tokenizer and image processor lookup as it reaches the weights: a private repo's CLIP
    loaded with a token (none in the environment) explains text prompts."""
    import subprocess
    import sys
    import textwrap

    from fake_hub import FakeHub

    save_source(tmp_path / "source")
    BcosCLIPModel.from_pretrained_standard(tmp_path / "source").save_pretrained(tmp_path / "bcos-clip")
    ids = byte_level_tokenizer()(PROMPTS).input_ids  # the source folder's tokenizer, which the B-cos folder saved
    files = {path.name: path.read_bytes() for path in (tmp_path / "bcos-clip").iterdir() if path.is_file()}
    code = """
        import sys
        sys.modules["bcos_zoo"] = None
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained("org/private-clip", token="{token}", trust_remote_code=True)
        assert model.tokenizer({prompts!r}).input_ids == {ids!r}, model.tokenizer
        assert model.default_image_processor().crop_size["height"] == 32
        explanation = model.explain(torch.rand(1, 3, 32, 32), text=["a cat", "a dog"])
        print("explained", tuple(explanation.contributions.shape))
    """
    with FakeHub() as hub:
        hub.seed("org/private-clip", files, private=True)
        (tmp_path / "home").mkdir()
        env = hub.env(home=tmp_path / "home", PYTHONPATH="")
        del env["HF_TOKEN"]
        completed = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code.format(token=hub.token, prompts=PROMPTS, ids=ids))],
            cwd=tmp_path / "home",
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert completed.returncode == 0 and "explained" in completed.stdout, completed.stderr[-3000:]


def test_a_clip_loaded_from_a_subfolder_reads_its_tokenizer_and_processor_there(tmp_path):
    save_source(tmp_path / "source")
    BcosCLIPModel.from_pretrained_standard(tmp_path / "source").save_pretrained(tmp_path / "outer" / "clip")
    model = BcosCLIPModel.from_pretrained(tmp_path / "outer", subfolder="clip")
    saved = byte_level_tokenizer()  # the source folder's tokenizer, which the B-cos folder saved
    assert model.tokenizer(PROMPTS).input_ids == saved(PROMPTS).input_ids
    assert model.default_image_processor().crop_size["height"] == 32


def test_a_clip_loaded_from_a_state_dict_looks_up_no_tokenizer(tmp_path, monkeypatch):
    """Without a path there is nothing saved beside the weights: no lookup of a repo named 'None' (online, it
    retried for minutes)."""
    from transformers import AutoTokenizer, CLIPImageProcessor

    save_source(tmp_path / "source")
    model = BcosCLIPModel.from_pretrained_standard(tmp_path / "source")

    def refuse(*args, **kwargs):
        raise AssertionError(f"looked up {args}")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(CLIPImageProcessor, "from_pretrained", refuse)
    loaded = BcosCLIPModel.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    assert loaded.tokenizer is None


def test_a_clip_loaded_with_a_token_does_not_keep_it_where_a_pickle_would_carry_it(tmp_path):
    import pickle

    save_source(tmp_path / "source")
    BcosCLIPModel.from_pretrained_standard(tmp_path / "source").save_pretrained(tmp_path / "bcos-clip")
    model = BcosCLIPModel.from_pretrained(tmp_path / "bcos-clip", token="hf_secret_token", revision="main")
    assert b"hf_secret_token" not in pickle.dumps(model)
