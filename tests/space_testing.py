"""Helpers for the Space tests: tiny model folders, a Space app started as a Space starts it, odd image files.

Each app runs in its own process (``python app.py`` in its folder), as on the Hub, on 127.0.0.1 and a free port,
offline, loading a small random B-cos model saved by the test. The model is loaded as remote code, so the app
process never needs ``bcos_zoo``.
"""

import contextlib
import io
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import torch
from clip_testing import save_source
from cnn_sources import hf_resnet
from PIL import Image
from sources import hf_vit, timm_vit

from bcos_zoo import BcosCLIPModel, BcosResNetForImageClassification, BcosViTForImageClassification


if TYPE_CHECKING:
    from playwright.sync_api import Page


SPACES = Path(__file__).resolve().parents[1] / "spaces"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
STARTUP_TIMEOUT = 180


def save_vit_folder(folder: Path, labels: int = 10, problem_type: str | None = None) -> BcosViTForImageClassification:
    """A small random B-cos ViT classifier (32 px, 8 px patches) saved as a loadable model folder."""
    model = BcosViTForImageClassification.from_pretrained_standard(
        hf_vit(labels=labels), b=2.0, bias="remove", image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)
    ).eval()
    model.config.problem_type = problem_type
    model.save_pretrained(folder)
    return model


def save_one_channel_vit_folder(folder: Path) -> BcosViTForImageClassification:
    """A small random B-cos ViT that takes one-channel (greyscale) images, converted from a timm ViT as the docs
    describe, saved as a loadable model folder."""
    model = BcosViTForImageClassification.from_pretrained_standard(
        timm_vit(in_chans=1, seed=2), image_mean=(0.3,), image_std=(0.2,)
    ).eval()
    model.save_pretrained(folder)
    return model


def save_resnet_folder(folder: Path, labels: int = 6, size: int = 48) -> BcosResNetForImageClassification:
    """A small random B-cos ResNet classifier saved as a loadable model folder; its processor resizes the shortest
    edge to ``size`` and crops the centre. Its classes are named ``cnn_class_<i>``, so that results tell it apart
    from the ViT of :func:`save_vit_folder`."""
    model = BcosResNetForImageClassification.from_pretrained_standard(
        hf_resnet("basic", labels=labels),
        b=2.0,
        bias="remove",
        image_mean=(0.5,) * 3,
        image_std=(0.5,) * 3,
        image_size=size,
    ).eval()
    model.config.id2label = {i: f"cnn_class_{i}" for i in range(labels)}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    model.save_pretrained(folder)
    return model


def save_clip_folder(folder: Path) -> BcosCLIPModel:
    """A small random B-cos CLIP (32 px image tower, byte-level tokenizer) saved as a loadable model folder."""
    save_source(folder.parent / f"{folder.name}-source")
    model = BcosCLIPModel.from_pretrained_standard(folder.parent / f"{folder.name}-source").eval()
    model.save_pretrained(folder)
    return model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningSpace:
    url: str
    process: subprocess.Popen
    log: Path
    uploads: Path  # GRADIO_TEMP_DIR: where Gradio keeps what users upload

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def start_space(name: str, model_folder: Path, workdir: Path, **env: str) -> RunningSpace:
    """Run ``python app.py`` in ``spaces/<name>`` against a local model folder and wait until it serves its page.

    The app runs in a fresh interpreter where ``import bcos_zoo`` fails, offline, with its own Hugging Face and
    Gradio caches under ``workdir``.
    """
    port = free_port()
    # A package of the same name, first on the path, that refuses to import: the app must stand without bcos_zoo.
    shadow = workdir / "without_bcos_zoo" / "bcos_zoo"
    shadow.mkdir(parents=True, exist_ok=True)
    (shadow / "__init__.py").write_text('raise ImportError("a Space must not need bcos_zoo")\n')
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    child_env.update(
        PYTHONPATH=str(shadow.parent),
        MODEL_ID=str(model_folder),
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(workdir / "gradio"),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(workdir / "hf_home"),
        HF_MODULES_CACHE=str(workdir / "hf_home" / "modules"),
        PYTHONUNBUFFERED="1",
        **env,
    )
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=SPACES / name, env=child_env, stdout=out, stderr=subprocess.STDOUT
        )
    space = RunningSpace(f"http://127.0.0.1:{port}/", process, log, Path(child_env["GRADIO_TEMP_DIR"]))
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if not space.alive():
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{space.log_text()}")
        try:
            with urllib.request.urlopen(space.url, timeout=5) as response:
                if response.status == 200:
                    return space
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    stop_space(space)
    raise RuntimeError(f"{name} did not serve within {STARTUP_TIMEOUT} s:\n{space.log_text()}")


def raw_call(space: RunningSpace, api: str, data: list) -> tuple[str, str]:
    """Call an endpoint as any HTTP client may, sending ``data`` as it is (gradio_client would mark files with
    ``meta``): the kind of the event that ends the answer ("complete" or "error") and its data."""
    with httpx.Client(base_url=space.url, timeout=120) as http:
        event = http.post(f"gradio_api/call/{api}", json={"data": data}).json()["event_id"]
        answer = http.get(f"gradio_api/call/{api}/{event}").text
    kind, payload = re.findall(r"^event: (\w+)\ndata: (.*)$", answer, re.MULTILINE)[-1]
    return kind, payload


def refused_paths(space: RunningSpace, private: Path) -> dict[str, object]:
    """Ways a request may name ``private``, a file outside the app's uploads and examples, that Gradio lets through
    (it checks a file only when the request marks it with ``meta``), by the name the tests use for them."""
    return {
        "file without meta": {"path": str(private)},
        "upload folder and ..": {"path": str(space.uploads / os.path.relpath(private, space.uploads))},
    }


def raw_upload(space: RunningSpace, path: Path) -> str:
    """Upload a file as the page does; the path the app is then given for it."""
    with open(path, "rb") as file:
        return httpx.post(f"{space.url}gradio_api/upload", files={"files": file}, timeout=60).json()[0]


def stop_space(space: RunningSpace) -> None:
    space.process.terminate()
    try:
        space.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        space.process.kill()
        space.process.wait()


def photo(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    """A random RGB picture (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def expected_top_class(model, folder: Path, image: Image.Image) -> str:
    """The class the saved model predicts for ``image``, preprocessed as the app does it."""
    from transformers import AutoImageProcessor

    pixel_values = AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    return model.config.id2label[int(logits.argmax())]


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def two_colour_image(size: int = 64) -> Image.Image:
    """Top half red, bottom half blue: orientation mistakes show as a swapped or rotated split."""
    data = np.zeros((size, size, 3), dtype=np.uint8)
    data[: size // 2, :, 0] = 255
    data[size // 2 :, :, 2] = 255
    return Image.fromarray(data)


def odd_images(folder: Path) -> dict[str, tuple[Path, tuple[int, int, int] | None]]:
    """Image files an app must read correctly, each with the RGB colour at the centre of the model's view
    (None where the colour is not the point). Files already in ``folder`` are reused."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    def add(name: str, make, colour, **save_args) -> None:
        path = folder / name
        if not path.exists():
            make().save(path, **save_args)
        files[name] = (path, colour)

    def palette() -> Image.Image:
        image = Image.new("P", (40, 30), 0)
        image.putpalette([0, 200, 0] + [0, 0, 0] * 255)
        return image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    add("grey.png", lambda: Image.new("L", (40, 30), 100), (100, 100, 100))
    add("palette.png", palette, (0, 200, 0))
    add("transparent.png", lambda: Image.new("RGBA", (40, 30), (255, 0, 0, 0)), (255, 255, 255))  # on white
    add("cmyk.jpg", lambda: Image.new("CMYK", (40, 30), (255, 0, 0, 0)), (0, 255, 255), quality=100)
    add("sixteen_bit.png", lambda: Image.fromarray(np.full((30, 40), 128 * 257, dtype=np.uint16)), (128, 128, 128))
    add("exif_rotated.jpg", lambda: two_colour_image().transpose(Image.Transpose.ROTATE_90), None, exif=exif)
    add("huge.png", lambda: Image.linear_gradient("L").resize((8000, 8000)).convert("RGB"), None, compress_level=1)
    return files


ODD_COLOURS = ["grey.png", "palette.png", "transparent.png", "cmyk.jpg", "sixteen_bit.png"]
UNREADABLE = ["text file", "truncated png", "truncated jpeg", "garbage with a png header"]


def unreadable_files(folder: Path) -> dict[str, Path]:
    """Files no app can read as an image, by the name the tests use for them."""
    folder.mkdir(exist_ok=True)
    png, jpeg = folder / "truncated.png", folder / "truncated.jpg"
    data = photo((200, 150), seed=1)
    data.save(png)
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    data.save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    text = folder / "notes.txt"
    text.write_text("not an image\n" * 20)
    fake = folder / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return {"text file": text, "truncated png": png, "truncated jpeg": jpeg, "garbage with a png header": fake}


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header claims ``width`` x ``height``: what an app sees of a huge image before decoding."""
    data = bytearray(png_bytes(Image.new("RGB", (8, 8))))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after the signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def is_loopback(url: str) -> bool:
    """True for URLs the page may load: the app itself, and in-page data/blob URLs."""
    parsed = urllib.parse.urlparse(url)
    return parsed.scheme in ("data", "blob") or parsed.hostname in ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 1100) -> Iterator[tuple["Page", list[str]]]:
    """A page in headless Debian Chromium driven by playwright, and the list of off-machine URLs it tried to load.

    Requests that leave the machine are recorded and aborted, so the page cannot depend on the internet.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing; the Space browser tests need Debian's chromium: run `bash scripts/setup.sh dev`.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    external: list[str] = []

    def route(route) -> None:
        if is_loopback(route.request.url):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            context.route("**/*", route)
            yield context.new_page(), external
        finally:
            browser.close()


def screenshot(page: "Page", name: str) -> Path:
    """Save a full-page screenshot under tests/artifacts/ and print where it is."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")
    return path
