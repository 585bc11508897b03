"""The B-cos CLIP explainer Space (spaces/bcos-clip-explainer), started as a Space starts it, against a small model.

It is driven the two ways users reach it: a real headless Chromium (the page) and gradio_client (the API).
"""

import re
import threading

import numpy as np
import pytest
import torch
from clip_testing import byte_level_tokenizer
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from space_testing import (
    ODD_COLOURS,
    UNREADABLE,
    chromium_page,
    odd_images,
    photo,
    raw_call,
    raw_upload,
    refused_paths,
    save_clip_folder,
    screenshot,
    start_space,
    stop_space,
    unreadable_files,
)


# each test talks to a Space app running in its own process
pytestmark = pytest.mark.subprocess


PROMPTS = ["a photo of a cat", "a photo of a dog", "a red car at night"]
CAPTION = re.compile(
    r"(?P<prompt>.+): cosine (?P<cosine>-?\d+\.\d+) = pixels (?P<pixels>-?\d+\.\d+) \+ bias (?P<bias>-?\d+\.\d+)"
)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The app on 127.0.0.1 with a small B-cos CLIP, the in-process model it was saved from, and the folder."""
    workdir = tmp_path_factory.mktemp("clip_space")
    folder = workdir / "bcos-clip"
    model = save_clip_folder(folder)
    model.tokenizer = byte_level_tokenizer()
    running = start_space("bcos-clip-explainer", folder, workdir)
    yield running, model, folder
    stop_space(running)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    photo(seed=3).save(path)
    return path


def model_view(folder, path) -> torch.Tensor:
    """(1, 3, S, S) the image as the saved processor prepares it (the app does the same for small images)."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder)(images=Image.open(path), return_tensors="pt")["pixel_values"]


def prompt_explanations(model, pixel_values: torch.Tensor, text_embeds: torch.Tensor):
    """Every prompt explained for the one image, as a batch: row k explains prompt k."""
    count = len(text_embeds)
    return model.explain(pixel_values.expand(count, -1, -1, -1), text_embeds=text_embeds, target=torch.arange(count))


def text_embeddings(model, prompts) -> torch.Tensor:
    tokens = model.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)


def pixels_of(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(float)


@pytest.mark.browser
def test_page_shows_zero_shot_scores_and_prompt_explanations_in_chromium(space, image_file):
    running, model, folder = space
    cosines = model.explain(model_view(folder, image_file), text=PROMPTS).logits[0]
    best = PROMPTS[int(cosines.argmax())]
    with chromium_page() as (page, external):
        page.goto(running.url)
        page.locator("input[type=file]").first.set_input_files(str(image_file))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.locator("#prompts textarea").fill("\n".join(PROMPTS))
        page.get_by_label("Localisation view").check()
        page.get_by_role("button", name="Explain").click()

        page.locator("#scores").get_by_text(best).first.wait_for(timeout=60_000)
        page.wait_for_function(
            "() => document.querySelectorAll('#explanations img').length >= 3 &&"
            " [...document.querySelectorAll('#explanations img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=30_000,
        )
        page.locator("#localised img").first.wait_for(state="visible", timeout=30_000)
        captions = page.locator("#explanations").inner_text()
        screenshot(page, "space_clip_explainer")

    assert all(prompt in captions for prompt in PROMPTS), captions
    assert external == [], f"the page tried to load from the web: {external}"
    assert running.alive()


NO_RESULTS = """() => !document.querySelector('#explanations img, #localised img')
    && !document.querySelector('#scores').innerText.includes('a photo')"""


@pytest.mark.browser
def test_page_clears_the_results_when_the_image_is_removed_or_replaced(space, image_file, tmp_path):
    """Scores and explanations never stand beside another image than the one they were computed for."""
    running, _, _ = space
    other = tmp_path / "other.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(other)
    with chromium_page() as (page, external):
        page.goto(running.url)
        page.locator("input[type=file]").first.set_input_files(str(image_file))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.locator("#prompts textarea").fill("\n".join(PROMPTS))
        page.get_by_label("Localisation view").check()
        page.get_by_role("button", name="Explain").click()
        page.locator("#localised img").first.wait_for(state="visible", timeout=60_000)
        page.locator("#upload").get_by_label("Remove Image").click()
        page.wait_for_function(NO_RESULTS, timeout=10_000)  # removing the image clears its results

        page.locator("input[type=file]").first.set_input_files(str(image_file))  # explain again, then replace it
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.get_by_role("button", name="Explain").click()
        page.locator("#explanations img").first.wait_for(state="visible", timeout=60_000)
        page.locator("#upload").get_by_label("Remove Image").click()
        page.locator("input[type=file]").first.set_input_files(str(other))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.wait_for_function(NO_RESULTS, timeout=10_000)
    assert external == []


@pytest.mark.browser
def test_an_explanation_still_running_when_the_image_is_replaced_never_lands_beside_the_new_image(
    space, client, odd_files, image_file
):
    running = space[0]
    huge, _ = odd_files["huge.png"]  # seconds to decode: the explanation is still running when the image changes
    with chromium_page() as (page, external):
        page.goto(running.url)
        page.locator("input[type=file]").first.set_input_files(str(huge))
        page.locator("#upload img").first.wait_for(state="visible", timeout=60_000)
        page.locator("#prompts textarea").fill("\n".join(PROMPTS))
        page.get_by_role("button", name="Explain").click()
        running_for = "() => /processing|\\d\\.\\ds/.test(document.querySelector('#scores').innerText)"
        page.wait_for_function(running_for, timeout=30_000)  # Gradio's progress text: the explanation is running
        page.locator("input[type=file]").first.set_input_files(str(image_file))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        client.predict(handle_file(str(image_file)), PROMPTS[0], False, api_name="/explain")  # queued behind it
        page.wait_for_timeout(1000)
        assert page.evaluate(NO_RESULTS), page.locator("#scores").inner_text()
    assert external == []


def test_zero_shot_scores_are_the_models_softmax_over_prompts(space, client, image_file):
    _, model, folder = space
    scores, *_ = client.predict(handle_file(str(image_file)), "\n".join(PROMPTS), False, api_name="/explain")
    cosines = model.explain(model_view(folder, image_file), text=PROMPTS).logits[0]
    expected = (model.logit_scale.exp() * cosines).softmax(-1)
    got = {entry["label"]: entry["confidence"] for entry in scores["confidences"]}
    assert got == pytest.approx(dict(zip(PROMPTS, expected.tolist())), abs=1e-5)
    assert scores["label"] == PROMPTS[int(expected.argmax())]


def test_each_prompt_gets_its_exact_explanation(space, client, image_file):
    _, model, folder = space
    _, _, gallery, _ = client.predict(handle_file(str(image_file)), "\n".join(PROMPTS), False, api_name="/explain")
    expected = prompt_explanations(model, model_view(folder, image_file), text_embeddings(model, PROMPTS))
    assert len(gallery) == len(PROMPTS)
    for k, item in enumerate(gallery):
        fields = CAPTION.fullmatch(item["caption"])
        assert fields and fields["prompt"] == PROMPTS[k], item["caption"]
        assert float(fields["cosine"]) == pytest.approx(float(expected.target_logits[k]), abs=2e-4)
        assert float(fields["pixels"]) + float(fields["bias"]) == pytest.approx(float(fields["cosine"]), abs=2e-4)
        shown = Image.open(item["image"])
        assert shown.format == "PNG" and shown.mode == "RGBA"
        rendered = (expected.render()[k].clamp(0, 1).numpy() * 255).round()
        scale = shown.height // rendered.shape[0]
        assert np.abs(np.asarray(shown).astype(float)[::scale, ::scale] - rendered).max() <= 2


def test_localisation_view_shows_the_image_where_a_prompt_beats_the_others(space, client, image_file):
    _, model, folder = space
    _, seen, _, localised = client.predict(handle_file(str(image_file)), "\n".join(PROMPTS), True, api_name="/explain")
    assert localised["visible"] is True and len(localised["value"]) == len(PROMPTS)
    text = text_embeddings(model, PROMPTS)
    others = (text.sum(0, keepdim=True) - text) / (len(PROMPTS) - 1)
    contrast = prompt_explanations(model, model_view(folder, image_file), text - others).contributions
    image = pixels_of(seen)
    for k, item in enumerate(localised["value"]):
        assert item["caption"] == PROMPTS[k]
        view = pixels_of(item["image"])
        scale = view.shape[0] // contrast.shape[1]
        against = (contrast[k] < 0).numpy().repeat(scale, 0).repeat(scale, 1)
        assert np.abs(view[against] - 0.2 * image[against]).max() <= 2  # dimmed where the prompt loses
        strongest = np.unravel_index(int(contrast[k].argmax()), contrast[k].shape)
        y, x = strongest[0] * scale, strongest[1] * scale
        assert np.abs(view[y, x] - image[y, x]).max() <= 2  # full brightness where it wins most


def test_localisation_view_is_hidden_unless_asked_for(client, image_file):
    *_, localised = client.predict(handle_file(str(image_file)), "a photo of a cat", False, api_name="/explain")
    assert localised["visible"] is False and localised["value"] == []


def test_prompts_beyond_latin_1_are_scored_and_explained(client, image_file):
    prompts = ["eine Katze auf dem Sofa", "一只猫", "a cat 🐈"]
    scores, _, gallery, _ = client.predict(handle_file(str(image_file)), "\n".join(prompts), False, api_name="/explain")
    assert {entry["label"] for entry in scores["confidences"]} == set(prompts)
    assert [Image.open(item["image"]).text["Title"] for item in gallery] == [
        f"B-cos explanation of {prompt!r}" for prompt in prompts
    ]


@pytest.mark.parametrize(
    "prompts, message",
    [("", "Enter at least one prompt"), ("\n  \n", "Enter at least one prompt"), ("\n".join("abcdefghi"), "at most 8")],
)
def test_missing_or_too_many_prompts_get_a_short_message(client, image_file, prompts, message):
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(image_file)), prompts, False, api_name="/explain")


@pytest.mark.parametrize("way", ["file without meta", "upload folder and .."])
def test_a_file_outside_the_uploads_is_refused_while_an_upload_named_the_same_way_is_explained(
    space, private_image, image_file, way
):
    """Events take the raw upload, which Gradio checks only when the request marks it as a file with ``meta``."""
    running, *_ = space
    kind, answer = raw_call(running, "explain", [refused_paths(running, private_image)[way], "a photo of a cat", False])
    assert kind == "error" and "Only images uploaded to this page" in answer, answer
    kind, answer = raw_call(running, "explain", [{"path": raw_upload(running, image_file)}, "a photo of a cat", False])
    assert kind == "complete" and "a photo of a cat" in answer, answer


def test_a_prompt_longer_than_the_model_reads_is_refused_by_name(space, client, image_file):
    """Cut silently, two prompts that differ only past the limit would get the same score."""
    limit = space[1].tokenizer.model_max_length
    long_prompt = "x " * limit + "cat"
    with pytest.raises(AppError, match=rf"at most {limit} tokens of a prompt; shorten '{long_prompt[:40]}…'"):
        client.predict(handle_file(str(image_file)), f"a photo of a cat\n{long_prompt}", False, api_name="/explain")


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    return odd_images(tmp_path_factory.getbasetemp() / "odd_images")


@pytest.mark.parametrize("name", ODD_COLOURS)
def test_image_mode_is_read_as_the_colours_a_viewer_shows(client, odd_files, name):
    path, colour = odd_files[name]
    _, seen, *_ = client.predict(handle_file(str(path)), "a photo of a cat", False, api_name="/explain")
    view = pixels_of(seen)
    centre = view[view.shape[0] // 2, view.shape[1] // 2]
    assert np.abs(centre - np.array(colour)).max() <= 6, (name, centre.tolist(), colour)


def test_exif_rotated_photo_is_explained_upright(client, odd_files):
    path, _ = odd_files["exif_rotated.jpg"]
    _, seen, *_ = client.predict(handle_file(str(path)), "a photo of a cat", False, api_name="/explain")
    view = pixels_of(seen)
    top, bottom = view[: view.shape[0] // 4].mean((0, 1)), view[-view.shape[0] // 4 :].mean((0, 1))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_8000_pixel_image_is_downscaled_and_explained(client, odd_files):
    path, _ = odd_files["huge.png"]
    scores, seen, gallery, _ = client.predict(handle_file(str(path)), "\n".join(PROMPTS), False, api_name="/explain")
    view = pixels_of(seen)
    assert view[: view.shape[0] // 4].mean() < 80 < 170 < view[-view.shape[0] // 4 :].mean()
    assert len(scores["confidences"]) == len(gallery) == len(PROMPTS)


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory):
    return unreadable_files(tmp_path_factory.mktemp("broken"))


@pytest.mark.parametrize("name", UNREADABLE)
def test_unreadable_file_gets_a_short_message_and_the_app_keeps_serving(space, client, broken_files, image_file, name):
    with pytest.raises(AppError) as raised:
        client.predict(handle_file(str(broken_files[name])), "a photo of a cat", False, api_name="/explain")
    message = str(raised.value)
    assert "could not be read as an image" in message
    assert len(message) < 150 and "Traceback" not in message and 'File "' not in message
    scores, *_ = client.predict(handle_file(str(image_file)), "a photo of a cat", False, api_name="/explain")
    assert scores["label"] == "a photo of a cat"
    assert space[0].alive()


def test_ten_simultaneous_users_all_get_their_scores(space, image_file):
    running, *_ = space
    clients = [Client(running.url, verbose=False) for _ in range(10)]
    start = threading.Barrier(len(clients))
    results, errors = [None] * len(clients), []

    def use(i: int) -> None:
        prompts = f"{PROMPTS[i % 3]}\nprompt number {i}"
        try:
            start.wait()
            results[i] = clients[i].predict(handle_file(str(image_file)), prompts, False, api_name="/explain")
        except Exception as error:  # collected and reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=use, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    for i, result in enumerate(results):
        labels = {entry["label"] for entry in result[0]["confidences"]}
        assert labels == {PROMPTS[i % 3], f"prompt number {i}"}  # each user gets the answer to their own prompts
