"""The B-cos ViT explainer Space (spaces/bcos-vit-explainer), started as a Space starts it, against a small model.

It is driven the two ways users reach it: a real headless Chromium (the page) and gradio_client (the API).
"""

import re
import threading
import time

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError, Status
from PIL import Image
from space_testing import (
    ODD_COLOURS,
    UNREADABLE,
    chromium_page,
    expected_top_class,
    odd_images,
    photo,
    png_claiming_size,
    save_vit_folder,
    screenshot,
    start_space,
    stop_space,
    unreadable_files,
)


QUEUE_MAX_SIZE = 10  # requests that may wait while one is processed
SUMMARY = re.compile(
    r"\*\*(?P<label>.+)\*\*: logit (?P<logit>-?\d+\.\d+) = pixel contributions (?P<pixels>-?\d+\.\d+) "
    r"\+ bias (?P<bias>-?\d+\.\d+)"
)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The app on 127.0.0.1 with a 10-class model, the in-process model it was saved from, and the folder."""
    workdir = tmp_path_factory.mktemp("vit_space")
    folder = workdir / "bcos-vit"
    model = save_vit_folder(folder)
    running = start_space("bcos-vit-explainer", folder, workdir, QUEUE_MAX_SIZE=str(QUEUE_MAX_SIZE))
    yield running, model, folder
    stop_space(running)


@pytest.fixture(scope="module")
def client(space):
    return Client(space[0].url, verbose=False)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    photo().save(path)
    return path


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory):
    return unreadable_files(tmp_path_factory.mktemp("broken"))


def pixels_of(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def explanation_of(model, image: Image.Image, folder, target=None):
    from transformers import AutoImageProcessor

    pixel_values = AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")["pixel_values"]
    return model.explain(pixel_values, target=target)


def test_page_uploads_an_image_and_shows_predictions_and_explanation_in_chromium(space, image_file):
    running, model, folder = space
    top_class = expected_top_class(model, folder, Image.open(image_file))
    with chromium_page() as (page, external):
        page.goto(running.url)
        page.locator("input[type=file]").first.set_input_files(str(image_file))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.get_by_role("button", name="Explain").click()

        explanation = page.locator("#explanation img").first
        explanation.wait_for(state="visible", timeout=60_000)
        page.locator("#contributions img").first.wait_for(state="visible", timeout=30_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#explanation img')].some(i => i.complete && i.naturalWidth > 0)"
        )
        predictions = page.locator("#predictions")
        predictions.get_by_text(top_class).first.wait_for(timeout=30_000)
        completeness = page.locator("#completeness").inner_text()
        shot = screenshot(page, "space_vit_explainer")
        with page.expect_download() as download:
            page.locator("#explanation").get_by_label("Download").click()
        downloaded = download.value.path().read_bytes()

    assert top_class in completeness and "pixel contributions" in completeness
    assert downloaded.startswith(b"\x89PNG\r\n\x1a\n")
    assert shot.stat().st_size > 10_000
    assert external == [], f"the page tried to load from the web: {external}"
    assert running.alive()


def test_page_explains_a_bundled_example_when_it_is_picked(space):
    running, *_ = space
    with chromium_page() as (page, external):
        page.goto(running.url)
        page.locator("img[src*='chelsea']").first.click()
        page.locator("#explanation img").first.wait_for(state="visible", timeout=60_000)
        page.locator("#predictions").get_by_text("class_").first.wait_for(timeout=30_000)
        completeness = page.locator("#completeness").inner_text()
        screenshot(page, "space_vit_explainer_example")
    assert "pixel contributions" in completeness
    assert external == []


def test_page_answers_a_broken_image_with_a_short_message_and_keeps_working(space, broken_files, image_file):
    running, model, folder = space
    top_class = expected_top_class(model, folder, Image.open(image_file))
    with chromium_page() as (page, external):
        page.goto(running.url)
        page.locator("input[type=file]").first.set_input_files(str(broken_files["truncated png"]))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.get_by_role("button", name="Explain").click()
        page.get_by_text("could not be read as an image").first.wait_for(timeout=30_000)
        text = page.locator("body").inner_text()
        screenshot(page, "space_vit_explainer_broken_image")

        page.get_by_label("Clear").first.click()
        page.locator("input[type=file]").first.set_input_files(str(image_file))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.get_by_role("button", name="Explain").click()
        page.locator("#predictions").get_by_text(top_class).first.wait_for(timeout=30_000)
    assert "Traceback" not in text and 'File "' not in text
    assert external == []


def test_predict_returns_the_models_top5_and_explains_its_top_class(space, client, image_file):
    _, model, folder = space
    top5, seen, colour, contributions, summary, picked = client.predict(
        handle_file(str(image_file)), api_name="/predict"
    )
    expected = explanation_of(model, Image.open(image_file), folder)
    probabilities = expected.logits[0].softmax(-1)
    order = probabilities.argsort(descending=True)[:5].tolist()

    labels = [entry["label"] for entry in top5["confidences"]]
    assert labels == [model.config.id2label[i] for i in order]
    confidences = [entry["confidence"] for entry in top5["confidences"]]
    assert confidences == pytest.approx(probabilities[order].tolist(), abs=1e-5)
    top_class = model.config.id2label[order[0]]
    assert picked == top_class

    fields = SUMMARY.search(summary)
    assert fields and fields["label"] == top_class, summary
    assert float(fields["logit"]) == pytest.approx(float(expected.target_logits[0]), abs=1e-3)
    assert float(fields["pixels"]) + float(fields["bias"]) == pytest.approx(float(fields["logit"]), abs=2e-4)

    for path in (seen, colour, contributions):
        assert Image.open(path).format == "PNG"
    assert Image.open(colour).mode == "RGBA"  # transparent where nothing speaks for the class
    assert Image.open(colour).text["Title"] == f"B-cos explanation of {top_class}"  # a download says what it shows
    assert Image.open(seen).size == Image.open(colour).size == Image.open(contributions).size


def test_explanation_picture_is_the_models_colour_rendering(space, client, image_file):
    _, model, folder = space
    _, _, colour, _, _, _ = client.predict(handle_file(str(image_file)), api_name="/predict")
    rendered = explanation_of(model, Image.open(image_file), folder).render()[0]
    expected = (rendered.clamp(0, 1).numpy() * 255).round()
    shown = np.asarray(Image.open(colour)).astype(float)
    scale = shown.shape[0] // expected.shape[0]
    assert np.abs(shown[::scale, ::scale] - expected).max() <= 2


def test_explain_endpoint_explains_the_class_the_user_picks(space, client, image_file):
    _, model, folder = space
    expected = explanation_of(model, Image.open(image_file), folder)
    last = int(expected.logits[0].argmin())
    picked = explanation_of(model, Image.open(image_file), folder, target=last)

    _, colour, contributions, summary = client.predict(
        handle_file(str(image_file)), model.config.id2label[last], api_name="/explain"
    )
    fields = SUMMARY.search(summary)
    assert fields and fields["label"] == model.config.id2label[last]
    assert float(fields["logit"]) == pytest.approx(float(picked.target_logits[0]), abs=1e-3)
    _, _, _, top_contributions, _, _ = client.predict(handle_file(str(image_file)), api_name="/predict")
    assert not np.array_equal(pixels_of(contributions), pixels_of(top_contributions))


def test_explain_endpoint_refuses_a_class_the_model_does_not_have(client, image_file):
    with pytest.raises(AppError, match="Pick one of the model's classes"):
        client.predict(handle_file(str(image_file)), "not a class", api_name="/explain")


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    return odd_images(tmp_path_factory.getbasetemp() / "odd_images")


@pytest.mark.parametrize("name", ODD_COLOURS)
def test_image_mode_is_read_as_the_colours_a_viewer_shows(client, odd_files, name):
    path, colour = odd_files[name]
    _, seen, *_ = client.predict(handle_file(str(path)), api_name="/predict")
    view = pixels_of(seen)
    centre = view[view.shape[0] // 2, view.shape[1] // 2]
    assert np.abs(centre - np.array(colour)).max() <= 6, (name, centre.tolist(), colour)


def test_exif_rotated_photo_is_explained_upright(client, odd_files):
    path, _ = odd_files["exif_rotated.jpg"]
    _, seen, *_ = client.predict(handle_file(str(path)), api_name="/predict")
    view = pixels_of(seen)
    top, bottom = view[: view.shape[0] // 4].mean((0, 1)), view[-view.shape[0] // 4 :].mean((0, 1))
    assert top[0] > 200 and top[2] < 60, top  # red on top, as the camera meant it
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_8000_pixel_image_is_downscaled_and_explained(client, odd_files):
    path, _ = odd_files["huge.png"]
    top5, seen, colour, *_ = client.predict(handle_file(str(path)), api_name="/predict")
    view = pixels_of(seen)
    assert len(top5["confidences"]) == 5
    assert view[: view.shape[0] // 4].mean() < 80 < 170 < view[-view.shape[0] // 4 :].mean()  # the dark-to-light ramp
    assert Image.open(colour).format == "PNG"


@pytest.mark.parametrize("name", UNREADABLE)
def test_unreadable_file_gets_a_short_message_and_the_app_keeps_serving(space, client, broken_files, image_file, name):
    with pytest.raises(AppError) as raised:
        client.predict(handle_file(str(broken_files[name])), api_name="/predict")
    message = str(raised.value)
    assert "could not be read as an image" in message
    assert len(message) < 150 and "Traceback" not in message and 'File "' not in message
    top5, *_ = client.predict(handle_file(str(image_file)), api_name="/predict")
    assert len(top5["confidences"]) == 5
    assert space[0].alive()


def test_ten_simultaneous_users_all_get_their_explanation(space, image_file):
    running, model, folder = space
    expected = expected_top_class(model, folder, Image.open(image_file))
    clients = [Client(running.url, verbose=False) for _ in range(10)]
    start = threading.Barrier(len(clients))
    results, errors = [None] * len(clients), []

    def use(i: int) -> None:
        try:
            start.wait()
            results[i] = clients[i].predict(handle_file(str(image_file)), api_name="/predict")
        except Exception as error:  # collected and reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=use, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert [result[0]["label"] for result in results] == [expected] * len(clients)


@pytest.mark.parametrize("side", [12_000, 20_000])
def test_image_over_100_megapixels_is_refused_before_decoding(space, client, tmp_path, side):
    claimed = png_claiming_size(tmp_path / "enormous.png", side, side)
    with pytest.raises(AppError, match=rf"too large \({side}x{side}\); the limit is 100 megapixels"):
        client.predict(handle_file(str(claimed)), api_name="/predict")
    assert space[0].alive()


def test_queue_turns_away_requests_beyond_its_bound_and_serves_the_rest(space, odd_files, image_file):
    """Three slow requests (8000x8000 PNGs) hold the single worker while 14 more users arrive: the queue takes as
    many as it has room for, tells the others it is full, and answers every request it took."""
    running, *_ = space
    huge, _ = odd_files["huge.png"]
    users = [Client(running.url, verbose=False) for _ in range(14)]
    slow_client = Client(running.url, verbose=False)
    slow = [slow_client.submit(handle_file(str(huge)), api_name="/predict") for _ in range(3)]
    while slow[0].status().code != Status.PROCESSING:
        time.sleep(0.02)
    start = threading.Barrier(len(users))
    answered, turned_away, errors = [], [], []

    def use(user: Client) -> None:
        start.wait()
        try:
            answered.append(user.predict(handle_file(str(image_file)), api_name="/predict"))
        except QueueError:
            turned_away.append(user)
        except Exception as error:  # collected and reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=use, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(len(job.result()[0]["confidences"]) == 5 for job in slow)
    assert errors == []
    assert turned_away, "the queue took every request: it has no bound"
    assert len(answered) + len(turned_away) == len(users)
    assert len(answered) >= QUEUE_MAX_SIZE - (len(slow) - 1)  # every free place in the queue was served
