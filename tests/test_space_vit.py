"""The B-cos explainer Space (spaces/bcos-vit-explainer), started as a Space starts it, offering two small models:
a B-cos ViT (the default) and a B-cos ResNet (any input size, its own processor and class names).

It is driven the two ways users reach it: a real headless Chromium (the page) and gradio_client (the API).
"""

import json
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
    SPACES,
    UNREADABLE,
    chromium_page,
    expected_top_class,
    odd_images,
    photo,
    png_claiming_size,
    raw_call,
    raw_upload,
    refused_paths,
    save_resnet_folder,
    save_vit_folder,
    screenshot,
    start_space,
    stop_space,
    unreadable_files,
)


# each test talks to a Space app running in its own process
pytestmark = pytest.mark.subprocess


QUEUE_MAX_SIZE = 10  # requests that may wait while one is processed
UNPUBLISHED = "bcos-zoo/not-published-yet"
SUMMARY = re.compile(
    r"\*\*(?P<label>.+)\*\*: logit (?P<logit>-?\d+\.\d+) = pixel contributions (?P<pixels>-?\d+\.\d+) "
    r"\+ bias (?P<bias>-?\d+\.\d+)"
)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The second model the app offers: a 6-class B-cos ResNet (48 px crops), and the folder it was saved to."""
    folder = tmp_path_factory.mktemp("cnn") / "bcos-resnet"
    return save_resnet_folder(folder), folder


@pytest.fixture(scope="module")
def space(tmp_path_factory, cnn):
    """The app on 127.0.0.1 with a 10-class ViT as its default model, the in-process model it was saved from, and
    the folder. MODEL_IDS offers the ResNet and a Hub model that cannot be loaded offline (as a zoo model not yet
    published), not the ViT: the app must add its default model to the list itself."""
    workdir = tmp_path_factory.mktemp("vit_space")
    folder = workdir / "bcos-vit"
    model = save_vit_folder(folder)
    running = start_space(
        "bcos-vit-explainer", folder, workdir, QUEUE_MAX_SIZE=str(QUEUE_MAX_SIZE), MODEL_IDS=f"{cnn[1]}, {UNPUBLISHED}"
    )
    yield running, model, folder
    stop_space(running)


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


@pytest.mark.browser
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


@pytest.mark.browser
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


@pytest.mark.browser
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

        page.locator("#upload").get_by_label("Remove Image").click()
        page.locator("#upload img").first.wait_for(state="detached", timeout=10_000)
        page.locator("input[type=file]").first.set_input_files(str(image_file))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.get_by_role("button", name="Explain").click()
        page.locator("#predictions").get_by_text(top_class).first.wait_for(timeout=30_000)
    assert "Traceback" not in text and 'File "' not in text
    assert external == []


NO_RESULTS = """() => !document.querySelector('#explanation img, #contributions img')
    && !/class_/.test(document.querySelector('#predictions').innerText)
    && !document.querySelector('#completeness').innerText.trim()"""


@pytest.mark.browser
def test_page_clears_the_results_when_the_image_is_removed_or_replaced(space, image_file, tmp_path):
    """Results never stand beside another image: a class picked after a new upload is explained for that image,
    and no top-5 of the old one is left."""
    running, model, folder = space
    other = tmp_path / "other.png"
    photo(seed=7).save(other)
    picked = explanation_of(model, Image.open(other), folder, target=3)
    with chromium_page() as (page, external):
        page.goto(running.url)
        page.locator("input[type=file]").first.set_input_files(str(image_file))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.get_by_role("button", name="Explain").click()
        wait_for_summary(page, str(folder))
        page.locator("#upload").get_by_label("Remove Image").click()
        page.wait_for_function(NO_RESULTS, timeout=10_000)  # removing the image clears its results

        page.locator("input[type=file]").first.set_input_files(str(other))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.wait_for_function(NO_RESULTS, timeout=10_000)
        open_dropdown(page, "#class-picker").get_by_role("option", name="class_3", exact=True).click()
        summary = wait_for_summary(page, "class_3: logit")
        predictions = page.locator("#predictions").inner_text()

    logit = float(re.search(r"logit (-?\d+\.\d+)", summary)[1])
    assert logit == pytest.approx(float(picked.target_logits[0]), abs=1e-3)  # the new image's explanation
    assert "class_" not in predictions, predictions  # and no top-5 of the old one
    assert external == []


@pytest.mark.browser
def test_an_explanation_still_running_when_the_image_is_replaced_never_lands_beside_the_new_image(
    space, client, odd_files, image_file
):
    running, _, _ = space
    huge, _ = odd_files["huge.png"]  # seconds to decode: the explanation is still running when the image changes
    with chromium_page() as (page, external):
        page.goto(running.url)
        page.locator("input[type=file]").first.set_input_files(str(huge))
        page.locator("#upload img").first.wait_for(state="visible", timeout=60_000)
        page.get_by_role("button", name="Explain").click()
        running_for = "() => /processing|\\d\\.\\ds/.test(document.querySelector('#completeness').innerText)"
        page.wait_for_function(running_for, timeout=30_000)  # Gradio's progress text: the explanation is running
        page.locator("input[type=file]").first.set_input_files(str(image_file))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        client.predict(handle_file(str(image_file)), api_name="/predict")  # queued behind the first: it has ended
        page.wait_for_timeout(1000)
        assert page.evaluate(NO_RESULTS), page.locator("#completeness").inner_text()
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
    assert Image.open(colour).text["Title"] == f"B-cos explanation of {top_class} by {folder}"  # a download says
    assert Image.open(colour).text["Source"] == str(folder)  # what it shows, and which model made it
    assert summary.endswith(f"Model: `{folder}`")
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
    with pytest.raises(AppError, match="Pick one of the classes of"):
        client.predict(handle_file(str(image_file)), "not a class", api_name="/explain")


def open_dropdown(page, picker: str):
    """Open a dropdown and return its own list of options (a dropdown closed just before may still show its list)."""
    field = page.locator(f"{picker} input").first
    field.click()
    listbox = page.locator(f"#{field.get_attribute('aria-controls')}")
    listbox.get_by_role("option").first.wait_for()
    return listbox


def options(listbox) -> list[str]:
    """The choices a list offers (the selected one is marked with a tick, dropped here)."""
    return [text.split("\n")[-1] for text in listbox.get_by_role("option").all_inner_texts()]


def wait_for_summary(page, text: str) -> str:
    """The completeness line once it contains ``text`` (say the model: the app's results always name it), without
    the progress text Gradio shows in the same box while an event runs."""
    page.wait_for_function("text => document.querySelector('#completeness').innerText.includes(text)", arg=text)
    return next(line for line in page.locator("#completeness").inner_text().splitlines() if text in line)


@pytest.mark.browser
def test_page_explains_with_the_cnn_the_user_chooses_and_again_with_the_vit(space, cnn, image_file):
    running, _, vit_folder = space
    _, cnn_folder = cnn
    with chromium_page() as (page, external):
        events = []  # every event the page puts in the queue
        page.on("request", lambda request: events.append(request.url) if "/queue/join" in request.url else None)
        page.goto(running.url)
        models = open_dropdown(page, "#model-picker")
        offered = options(models)
        models.get_by_role("option", name=str(cnn_folder), exact=True).click()
        page.locator("input[type=file]").first.set_input_files(str(image_file))
        page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
        page.get_by_role("button", name="Explain").click()
        cnn_summary = wait_for_summary(page, str(cnn_folder))
        page.locator("#explanation img").first.wait_for(state="visible", timeout=30_000)
        cnn_predictions = page.locator("#predictions").inner_text()
        screenshot(page, "space_vit_explainer_cnn")
        classes = open_dropdown(page, "#class-picker")
        cnn_classes = options(classes)
        classes.get_by_role("option", name="cnn_class_2", exact=True).click()
        picked_summary = wait_for_summary(page, "cnn_class_2: logit")

        # Choosing the ViT again explains the same image with it: classes and results follow the model.
        open_dropdown(page, "#model-picker").get_by_role("option", name=str(vit_folder), exact=True).click()
        vit_summary = wait_for_summary(page, str(vit_folder))
        vit_predictions = page.locator("#predictions").inner_text()
        vit_classes = options(open_dropdown(page, "#class-picker"))

    assert offered == [str(vit_folder), str(cnn_folder), UNPUBLISHED]  # MODEL_IDS, with the default model first
    assert len(events) == 4  # one per pick and one per click: nothing is explained twice
    assert cnn_classes == [f"cnn_class_{i}" for i in range(6)]
    assert vit_classes == [f"class_{i}" for i in range(10)]
    assert re.match(r"cnn_class_\d: logit ", cnn_summary) and str(vit_folder) not in cnn_summary
    assert picked_summary.endswith(f"Model: {cnn_folder}")
    assert re.match(r"class_\d: logit ", vit_summary) and str(cnn_folder) not in vit_summary
    shown = re.findall(r"\w*class_\d+", cnn_predictions)
    assert len(shown) >= 5 and all(name.startswith("cnn_class_") for name in shown), cnn_predictions
    shown = re.findall(r"\w*class_\d+", vit_predictions)
    assert len(shown) >= 5 and not any(name.startswith("cnn_") for name in shown), vit_predictions
    assert external == []
    assert running.alive()


def test_predict_with_the_cnn_uses_its_processor_classes_and_explanation(client, cnn, image_file):
    """The ResNet sees its own 48 px crop (the ViT sees 32 px) and answers with its own classes and logits."""
    model, folder = cnn
    image = Image.open(image_file)
    top5, seen, colour, _, summary, picked = client.predict(
        handle_file(str(image_file)), str(folder), api_name="/predict"
    )
    expected = explanation_of(model, image, folder)
    probabilities = expected.logits[0].softmax(-1)
    names = [model.config.id2label[i] for i in range(len(probabilities))]

    # The random model's probabilities nearly tie, so the order is checked against the values, not re-derived.
    shown = {entry["label"]: entry["confidence"] for entry in top5["confidences"]}
    assert len(shown) == 5 and set(shown) <= set(names)
    for label, confidence in shown.items():
        assert confidence == pytest.approx(float(probabilities[names.index(label)]), abs=1e-6)
    assert list(shown.values()) == sorted(shown.values(), reverse=True)
    left_out = [float(p) for name, p in zip(names, probabilities) if name not in shown]
    assert max(left_out) <= min(shown.values()) + 1e-6  # the five shown are the top five
    assert picked == top5["confidences"][0]["label"]
    fields = SUMMARY.search(summary)
    assert fields and fields["label"] == picked and summary.endswith(f"Model: `{folder}`")
    target = names.index(picked)
    assert float(fields["logit"]) == pytest.approx(float(expected.logits[0, target]), abs=1e-3)
    assert float(fields["pixels"]) + float(fields["bias"]) == pytest.approx(float(fields["logit"]), abs=2e-4)

    from transformers import AutoImageProcessor

    pixel_values = AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")["pixel_values"][0]
    assert pixel_values.shape == (3, 48, 48)
    view = pixels_of(seen)
    scale = view.shape[0] // 48
    assert view.shape[:2] == (48 * scale, 48 * scale)
    assert np.abs(view[::scale, ::scale] - (pixel_values.permute(1, 2, 0).numpy() * 255).round()).max() <= 1

    rendered = explanation_of(model, image, folder, target=target).render()[0]
    assert (
        np.abs(np.asarray(Image.open(colour)).astype(float)[::scale, ::scale] - (rendered.numpy() * 255).round()).max()
        <= 2
    )
    assert Image.open(colour).text["Title"] == f"B-cos explanation of {picked} by {folder}"


def test_explain_endpoint_explains_a_cnn_class_with_the_cnn_and_refuses_it_for_the_vit(client, cnn, image_file):
    model, folder = cnn
    picked = explanation_of(model, Image.open(image_file), folder, target=2)
    _, _, _, summary = client.predict(handle_file(str(image_file)), "cnn_class_2", str(folder), api_name="/explain")
    fields = SUMMARY.search(summary)
    assert fields and fields["label"] == "cnn_class_2" and summary.endswith(f"Model: `{folder}`")
    assert float(fields["logit"]) == pytest.approx(float(picked.target_logits[0]), abs=1e-3)
    with pytest.raises(AppError, match="Pick one of the classes of"):
        client.predict(handle_file(str(image_file)), "cnn_class_2", api_name="/explain")  # the default ViT's turn


def test_a_model_that_is_not_offered_is_refused_unloaded(space, client, cnn, image_file):
    """Requests may name any model; only the offered ones are loaded (remote code runs on loading). The folder
    written with a trailing slash would load, but it is not one of the offered names."""
    unoffered = str(cnn[1]) + "/"
    with pytest.raises(AppError, match="Pick one of the offered models"):
        client.predict(handle_file(str(image_file)), unoffered, api_name="/predict")
    assert unoffered not in space[0].log_text()


def test_an_offered_model_that_cannot_be_loaded_gets_a_short_message_and_the_others_keep_working(
    space, client, image_file
):
    for _ in range(2):  # a failed load is not remembered as loaded
        with pytest.raises(AppError) as raised:
            client.predict(handle_file(str(image_file)), UNPUBLISHED, api_name="/predict")
        assert str(raised.value) == f"The model {UNPUBLISHED} could not be loaded; pick another one."
    assert space[0].log_text().count(f"loading {UNPUBLISHED} failed") == 2
    top5, *_ = client.predict(handle_file(str(image_file)), api_name="/predict")
    assert len(top5["confidences"]) == 5
    assert space[0].alive()


@pytest.mark.parametrize("way", ["file without meta", "upload folder and .."])
def test_a_file_outside_the_uploads_is_refused_while_an_upload_named_the_same_way_is_explained(
    space, private_image, image_file, way
):
    """Events take the raw upload, which Gradio checks only when the request marks it as a file with ``meta``."""
    running, _, folder = space
    kind, answer = raw_call(running, "predict", [refused_paths(running, private_image)[way], str(folder)])
    assert kind == "error" and "Only images uploaded to this page" in answer, answer
    kind, answer = raw_call(running, "predict", [{"path": raw_upload(running, image_file)}, str(folder)])
    assert kind == "complete" and "class_" in answer, answer


def test_offered_models_are_the_readme_header_list_with_model_id_first(space, clean_python):
    """Without MODEL_IDS the app offers the models its README header lists (the zoo's image classifiers), with
    MODEL_ID, the model it shows first, in front when the list lacks it."""
    from huggingface_hub import SpaceCard

    _, _, folder = space
    listed = SpaceCard.load(SPACES / "bcos-vit-explainer" / "README.md").data.models
    out = clean_python(
        f"""
        import json, os, sys
        os.environ["MODEL_ID"] = {str(folder)!r}
        os.environ.pop("MODEL_IDS", None)
        sys.path.insert(0, os.getcwd())
        import app
        print(json.dumps(app.MODEL_CHOICES))
        """,
        cwd=SPACES / "bcos-vit-explainer",
    )
    assert json.loads(out.splitlines()[-1]) == [str(folder), *listed]
    assert "bcos-zoo/bcos-resnet50" in listed


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
