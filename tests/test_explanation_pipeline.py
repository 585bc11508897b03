"""``pipeline("image-explanation", trust_remote_code=True)``: labels, scores and exact explanations, in a process that
has only transformers, for every B-cos image classifier family."""

import json

import numpy as np
import pytest
from cnn_sources import hf_resnet
from PIL import Image
from sources import hf_vit
from transformers import pipeline

from bcos_zoo import BcosResNetForImageClassification, BcosViTForImageClassification


@pytest.fixture(scope="module", params=["vit", "resnet"])
def saved(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "vit":
        model = BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=4), b=2.0)
    else:
        model = BcosResNetForImageClassification.from_pretrained_standard(hf_resnet(labels=4), b=2.0)
    model.eval().save_pretrained(folder)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(folder / "photo.png")
    return folder


def test_config_names_the_pipeline_and_the_folder_holds_its_code(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["custom_pipelines"]["image-explanation"]["impl"].startswith("pipeline_bcos_explanation.")
    assert (saved / "pipeline_bcos_explanation.py").is_file()


@pytest.mark.subprocess
def test_pipeline_returns_labels_scores_and_complete_explanations(saved, clean_python):
    output = clean_python(
        f"""
        import json
        import torch
        from PIL import Image
        from transformers import pipeline

        pipe = pipeline("image-explanation", model={str(saved)!r}, trust_remote_code=True)
        pixels = pipe.image_processor(Image.open({str(saved / "photo.png")!r}), return_tensors="pt").pixel_values
        with torch.no_grad():
            forward = pipe.model(pixel_values=pixels).logits[0]  # the model's own logits of the photo
        index_of = {{label: index for index, label in pipe.model.config.id2label.items()}}
        top = pipe({str(saved / "photo.png")!r}, top_k=3, explain=2)
        asked = pipe({str(saved / "photo.png")!r}, top_k=1, labels=[pipe.model.config.id2label[3]])
        classes = pipeline("image-classification", model={str(saved)!r}, trust_remote_code=True)
        reference = classes({str(saved / "photo.png")!r}, top_k=3)

        def summary(results):
            rows = []
            for row in results:
                explanation = row.get("explanation") or dict()
                rows.append(dict(
                    label=row["label"],
                    score=row["score"],
                    explained=bool(explanation),
                    total=float(explanation["contributions"].sum()) + explanation["bias"] if explanation else None,
                    logit=explanation.get("logit"),
                    forward_logit=float(forward[index_of[row["label"]]]),
                    rgba=list(explanation["rgba"].shape) if explanation else None,
                ))
            return rows

        label_3 = pipe.model.config.id2label[3]
        print(json.dumps(dict(top=summary(top), asked=summary(asked), reference=reference, label_3=label_3)))
        """,
        cwd=saved,
    )
    result = json.loads(output)
    top, asked, reference = result["top"], result["asked"], result["reference"]
    assert [row["label"] for row in top] == [row["label"] for row in reference]
    assert [row["score"] for row in top] == pytest.approx([row["score"] for row in reference], abs=1e-5)
    assert [row["explained"] for row in top] == [True, True, False]
    for row in top[:2] + [asked[-1]]:
        assert row["total"] == pytest.approx(row["logit"], rel=1e-4, abs=1e-4)  # contributions + bias = logit
        assert row["logit"] == pytest.approx(row["forward_logit"], rel=1e-4, abs=1e-4)  # the logit of that class
        assert row["rgba"][-1] == 4
    explained = [row for row in asked if row["explained"]]
    assert len(explained) == 1 and explained[0]["label"] == result["label_3"]
    assert asked[0]["label"] == reference[0]["label"]


def test_explain_zero_or_no_labels_gives_scores_without_explanations(saved):
    pipe = pipeline("image-explanation", model=str(saved), trust_remote_code=True)
    for asked in (dict(explain=0), dict(labels=[])):
        results = pipe(str(saved / "photo.png"), top_k=2, **asked)
        assert len(results) == 2 and not any("explanation" in row for row in results)


@pytest.mark.parametrize("explain", [-1, 2.5, "2"])
def test_explain_count_that_is_not_a_non_negative_int_is_refused(saved, explain):
    pipe = pipeline("image-explanation", model=str(saved), trust_remote_code=True)
    with pytest.raises(ValueError, match="how many of the top labels"):
        pipe(str(saved / "photo.png"), explain=explain)


def test_a_model_in_memory_runs_the_pipeline_with_its_own_processor(saved):
    """Importing bcos_zoo registers the task, so a model just B-cosified can be tried before it is saved."""
    model = BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=4), b=2.0).eval()
    pipe = pipeline("image-explanation", model=model, image_processor=model.default_image_processor())
    results = pipe(str(saved / "photo.png"), top_k=2)
    pixels = model.default_image_processor()(Image.open(saved / "photo.png"), return_tensors="pt").pixel_values
    expected = model.explain(pixels)
    assert results[0]["label"] == model.config.id2label[int(expected.target[0])]
    explanation = results[0]["explanation"]
    np.testing.assert_allclose(explanation["contributions"], expected.contributions[0].numpy(), rtol=1e-5, atol=1e-6)
    assert explanation["contributions"].sum() + explanation["bias"] == pytest.approx(explanation["logit"], abs=1e-4)


@pytest.mark.parametrize("asked", [dict(explain=2), dict(labels=[1, 3])], ids=["explain", "labels"])
def test_batched_images_get_what_each_gets_alone(saved, asked):
    pipe = pipeline("image-explanation", model=str(saved), trust_remote_code=True)
    if "labels" in asked:
        asked = dict(labels=[pipe.model.config.id2label[index] for index in asked["labels"]])
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 40, 3), dtype=np.uint8)) for i in range(3)]
    alone = [pipe(image, top_k=3, **asked) for image in images]
    batched = pipe(images, top_k=3, batch_size=2, **asked)
    assert len(batched) == 3
    for one, other in zip(alone, batched):
        assert [row["label"] for row in one] == [row["label"] for row in other]
        for a, b in zip(one, other):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5) and ("explanation" in a) == ("explanation" in b)
            if "explanation" in a:
                np.testing.assert_allclose(
                    a["explanation"]["contributions"], b["explanation"]["contributions"], atol=1e-5
                )
                assert a["explanation"]["logit"] == pytest.approx(b["explanation"]["logit"], abs=1e-4)


@pytest.mark.parametrize(("problem_type", "labels"), [(None, 4), ("multi_label_classification", 4), ("regression", 1)])
def test_scores_are_those_image_classification_gives_for_the_problem_type(problem_type, labels, tmp_path):
    model = BcosViTForImageClassification.from_pretrained_standard(
        hf_vit(labels=labels), b=2.0, problem_type=problem_type
    )
    photo = str(tmp_path / "photo.png")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    processor = model.default_image_processor()
    explained = pipeline("image-explanation", model=model, image_processor=processor)(photo, top_k=labels)
    classified = pipeline("image-classification", model=model, image_processor=processor)(photo, top_k=labels)
    assert [row["label"] for row in explained] == [row["label"] for row in classified]
    for ours, theirs in zip(explained, classified):
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-6)
