"""``pipeline("image-explanation", trust_remote_code=True)``: labels, scores and exact explanations, in a process that
has only transformers, for every B-cos image classifier family."""

import gc
import http.server
import json
import os
import re
import socketserver
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from cnn_sources import hf_resnet
from huggingface_hub.utils import httpx
from PIL import Image
from sources import hf_vit
from transformers import pipeline

from bcos_zoo import BcosResNetForImageClassification, BcosViTForImageClassification
from bcos_zoo.modeling.pipeline_bcos_explanation import read_image, to_rgb


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


@pytest.mark.parametrize("count", [-1, 2.5, "2", True])
@pytest.mark.parametrize("name", ["explain", "top_k"])
def test_an_explain_or_top_k_count_that_is_not_a_non_negative_int_is_refused(saved, name, count):
    pipe = pipeline("image-explanation", model=str(saved), trust_remote_code=True)
    with pytest.raises(ValueError, match=f"{name} takes how many of the top labels"):
        pipe(str(saved / "photo.png"), **{name: count})


def test_explain_and_top_k_take_numpy_integers(saved):
    pipe = pipeline("image-explanation", model=str(saved), trust_remote_code=True)
    results = pipe(str(saved / "photo.png"), top_k=np.int64(2), explain=np.int32(1))
    assert len(results) == 2 and "explanation" in results[0] and "explanation" not in results[1]


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


@pytest.mark.parametrize(
    ("problem_type", "labels"), [(None, 4), ("multi_label_classification", 4), ("regression", 1), (None, 1)]
)
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


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(path)
    return path


def in_memory_pipeline(id2label=None):
    model = BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=4), b=2.0).eval()
    if id2label is not None:
        model.config.id2label, model.config.label2id = id2label, {name: i for i, name in id2label.items()}
    return pipeline("image-explanation", model=model, image_processor=model.default_image_processor()), model


def test_a_name_two_classes_share_is_refused_naming_both_and_an_index_explains_either(photo):
    pipe, model = in_memory_pipeline({0: "crane", 1: "dog", 2: "crane", 3: "cat"})
    with pytest.raises(ValueError, match=r"'crane' names classes \[0, 2\]: pass the index instead"):
        pipe(str(photo), labels=["crane"])
    with pytest.raises(ValueError, match="'fox' is not one of this model's"):
        pipe(str(photo), labels=["fox"])
    with pytest.raises(ValueError, match="True is not one of this model's"):
        pipe(str(photo), labels=[True])
    results = pipe(str(photo), top_k=0, labels=[2, "dog", 2, 1])  # each class once
    pixels = model.default_image_processor()(Image.open(photo), return_tensors="pt").pixel_values
    assert [row["explanation"]["logit"] for row in results] == pytest.approx(
        model(pixel_values=pixels).logits[0, [2, 1]].tolist(), abs=1e-5
    )


@pytest.mark.parametrize(
    "labels",
    [np.int64(2), torch.tensor(2), [np.int64(2), 1], np.array([2, 1]), torch.tensor([2, 1]), (2, "dog"), {2: "a"}],
    ids=["numpy int", "0-d tensor", "list with a numpy int", "numpy array", "tensor", "tuple", "dict keys"],
)
def test_labels_may_be_numpy_or_torch_integers_or_any_collection_of_labels(photo, labels):
    pipe, _ = in_memory_pipeline({0: "crane", 1: "dog", 2: "crane", 3: "cat"})
    expected = [2] if np.ndim(labels) == 0 or isinstance(labels, dict) else [2, 1]
    results = pipe(str(photo), top_k=0, labels=labels)
    by_hand = pipe(str(photo), top_k=0, labels=expected)
    assert [row["explanation"]["logit"] for row in results] == [row["explanation"]["logit"] for row in by_hand]
    assert len(results) == len(expected)


def test_a_16_bit_or_transparent_image_is_read_as_a_viewer_shows_it(tmp_path):
    """As the package reads files (to_rgb): 16-bit greyscale rescaled, not clipped to white; transparency on white."""
    pipe, model = in_memory_pipeline()
    ramp = np.tile(np.linspace(0, 65535, 60).astype(np.uint16), (45, 1))
    half = np.zeros((45, 60, 4), dtype=np.uint8)
    half[..., 3] = 255
    half[:, 30:, 3] = 0  # transparent right half: white
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    Image.fromarray(half).save(tmp_path / "half.png")
    for name, shown in (("ramp.png", np.repeat((ramp / 257).round()[..., None], 3, 2)), ("half.png", None)):
        if shown is None:
            shown = np.where(half[..., 3:] == 0, 255, half[..., :3])
        pixels = model.default_image_processor()(Image.fromarray(shown.astype(np.uint8)), return_tensors="pt")
        expected = model(pixel_values=pixels.pixel_values).logits[0].max()
        assert pipe(str(tmp_path / name), top_k=1)[0]["explanation"]["logit"] == pytest.approx(
            float(expected), abs=1e-4
        )


def test_arrays_are_taken_as_image_classification_takes_them(photo):
    pipe, model = in_memory_pipeline()
    array = np.asarray(Image.open(photo))
    classified = pipeline("image-classification", model=model, image_processor=model.default_image_processor())
    for image in (array, torch.from_numpy(array).permute(2, 0, 1)):
        explained, reference = pipe(image, top_k=2), classified(image, top_k=2)
        assert [row["label"] for row in explained] == [row["label"] for row in reference]
        assert [row["score"] for row in explained] == pytest.approx([row["score"] for row in reference], abs=1e-6)


def test_a_float_image_in_0_1_is_not_divided_by_255_again(photo):
    """The model's own input format, handed in as an array or tensor, reads as the same picture its 8-bit file does
    (an 8-bit resize and a float one differ by rounding only), not as a black one."""
    pipe, _ = in_memory_pipeline()
    array = np.asarray(Image.open(photo))
    expected, black = (pipe(image, top_k=1, labels=[1])[-1]["explanation"]["logit"] for image in (array, 0 * array))
    floats = array.astype(np.float32) / 255
    for image in (floats, torch.from_numpy(floats).permute(2, 0, 1), torch.from_numpy(floats).permute(2, 0, 1)[None]):
        explained = pipe(image, top_k=1, labels=[1])[-1]["explanation"]
        assert abs(explained["logit"] - expected) < abs(black - expected) / 20
        assert explained["contributions"].sum() + explained["bias"] == pytest.approx(explained["logit"], abs=1e-4)


def test_a_float_image_in_0_1_that_resizing_overshoots_is_clamped_and_a_negative_one_refused():
    pipe, model = in_memory_pipeline()
    pipe.image_processor.resample = Image.Resampling.BICUBIC  # as timm sources resize
    stripes = np.zeros((6, 6, 3), dtype=np.float32)
    stripes[:, ::2] = 1.0  # a bicubic enlargement of hard edges overshoots [0, 1]
    processed = pipe.image_processor(stripes, do_rescale=False, return_tensors="pt").pixel_values
    assert processed.min() < -0.01 and processed.max() > 1.01
    expected = model(pixel_values=processed.clamp(0, 1)).logits[0, 1]
    assert pipe(stripes, top_k=1, labels=[1])[-1]["explanation"]["logit"] == pytest.approx(float(expected), abs=1e-5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        pipe(stripes - 0.5)  # negative, so not a [0, 1] image: refused, not clamped into one
    pipe.image_processor.do_normalize = True  # a processor with a mean and std, passed by mistake: refused
    pipe.image_processor.image_mean, pipe.image_processor.image_std = [0.5] * 3, [0.5] * 3
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        pipe(stripes)


def test_a_batch_of_several_images_in_one_array_is_refused_naming_a_list(photo):
    pipe, _ = in_memory_pipeline()
    batch = torch.from_numpy(np.asarray(Image.open(photo))).permute(2, 0, 1).expand(2, -1, -1, -1)
    with pytest.raises(ValueError, match="batch of 2: pass them as a list"):
        pipe(batch)
    assert len(pipe(list(batch), top_k=1)) == 2


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_a_2d_array_is_the_greyscale_picture_its_l_image_is(photo, kind):
    pipe, _ = in_memory_pipeline()
    grey = Image.open(photo).convert("L")
    array = np.asarray(grey) if kind == "numpy" else torch.from_numpy(np.asarray(grey).copy())
    from_array, from_image = pipe(array, top_k=4, explain=4), pipe(grey, top_k=4, explain=4)
    assert [row["label"] for row in from_array] == [row["label"] for row in from_image]
    logits = [[row["explanation"]["logit"] for row in rows] for rows in (from_array, from_image)]
    assert logits[0] == pytest.approx(logits[1], abs=1e-5)


def test_deep_greyscale_modes_are_read_on_the_scale_they_are_written_on():
    """Integer modes as 16-bit (how Pillow opens a 16-bit file), a float image as 0..1 or, above 1, as Pillow converts
    an 8-bit one: each reads as the same grey picture (Pillow's ``convert("RGB")`` clips them to white)."""
    grey = Image.fromarray(np.random.default_rng(3).integers(0, 256, (5, 6), dtype=np.uint8))
    values = np.asarray(grey)
    same_picture = [
        grey.convert("F"),
        Image.fromarray(values.astype(np.float32) / 255),  # F, 0..1
        Image.fromarray(values.astype(np.uint16) * 257),  # I;16
        Image.fromarray(values.astype(np.int32) * 257),  # I
    ]
    for image in same_picture:
        np.testing.assert_array_equal(np.asarray(to_rgb(image)), np.asarray(grey.convert("RGB")), image.mode)


def test_a_16_bit_file_pillow_opens_as_i_reads_on_the_16_bit_scale_however_dark(tmp_path):
    dark = np.array([[0, 64, 128, 255]], dtype=np.uint16)  # a 16-bit PGM whose brightest value is 255 of 65535
    (tmp_path / "dark.pgm").write_bytes(b"P5\n4 1\n65535\n" + dark.astype(">u2").tobytes())
    image = Image.open(tmp_path / "dark.pgm")
    assert image.mode == "I"
    assert np.asarray(to_rgb(image))[..., 0].tolist() == [[0, 0, 0, 1]]


def test_nan_in_a_float_image_is_black_and_leaves_the_rest_on_its_scale():
    image = Image.fromarray(np.array([[np.nan, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(image))[..., 0].tolist() == [[0, 128, 255]]


class Silent(socketserver.BaseRequestHandler):
    def handle(self):
        time.sleep(5)  # takes the connection, never answers


class NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(404)

    def log_message(self, *args):
        pass


class NotAnImage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>moved</html>")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "handler, message",
    [
        (Silent, "The image at {url} could not be fetched: .*timed out"),
        (NotFound, "The image at {url} could not be fetched: .*404"),
        (NotAnImage, "{url} answered with something that is not an image \\(text/html\\)"),
    ],
)
def test_a_url_that_does_not_answer_or_answers_no_image_is_refused_naming_it(handler, message):
    pipe, _ = in_memory_pipeline()
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/cat.jpg"
            started = time.monotonic()
            with pytest.raises(ValueError, match=message.format(url=re.escape(url))):
                pipe(url, timeout=0.5)
            assert time.monotonic() - started < 4
        finally:
            server.shutdown()


def test_a_url_waits_30_seconds_unless_told_otherwise(monkeypatch):
    waits = []

    def no_network(url, timeout, **options):
        waits.append(timeout)
        raise httpx.ConnectError("offline")

    monkeypatch.setattr(httpx, "get", no_network)
    pipe, _ = in_memory_pipeline()
    for asked in ({}, {"timeout": 2.0}):
        with pytest.raises(ValueError, match="could not be fetched: offline"):
            pipe("https://example.com/cat.jpg", **asked)
    assert waits == [30.0, 2.0]


def test_an_image_file_is_closed_once_read_also_when_it_cannot_be_read(tmp_path):
    """A notebook keeps the errors it shows: a file read for one must not stay open as long as its error lives."""
    frames = [Image.new("RGB", (8, 8), (value,) * 3) for value in (10, 100, 200)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])  # read lazily, frame by frame
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    open_files = len(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        kept = [read_image(str(tmp_path / "moving.gif"))]
        for _ in range(3):
            with pytest.raises(OSError, match="truncated") as refused:
                read_image(str(tmp_path / "cut.png"))
            kept.append(refused.value)
        assert len(os.listdir("/proc/self/fd")) == open_files
        gc.collect()
    assert not [warning for warning in caught if issubclass(warning.category, ResourceWarning)]
