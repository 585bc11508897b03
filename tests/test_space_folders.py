"""The Space folders upload as they are: a valid Space card, the app file it names, requirements that cover the app.

The apps load their model as remote code, so a Space must not need this package: everything an app imports is the
standard library, Gradio (installed by the Space from ``sdk_version``) or listed in its requirements.txt.
"""

import ast
import re
import sys

import gradio
import numpy as np
import pytest
from huggingface_hub import SpaceCard
from PIL import Image
from space_testing import SPACES

from bcos_zoo.data.preprocessing import to_rgb


NAMES = ["bcos-vit-explainer", "bcos-clip-explainer"]
# import name -> distribution name, for the packages a Space may list
DISTRIBUTIONS = {"torch": "torch", "transformers": "transformers", "PIL": "pillow", "numpy": "numpy", "yaml": "pyyaml"}


def requirements(name: str) -> set[str]:
    lines = (SPACES / name / "requirements.txt").read_text().splitlines()
    return {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower() for line in lines if line.strip()}


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", NAMES)
def test_space_card_parses_and_names_the_app_file_that_exists(name):
    card = SpaceCard.load(SPACES / name / "README.md")
    data = card.data
    assert data.sdk == "gradio"
    assert (SPACES / name / data.app_file).is_file()
    assert data.sdk_version == gradio.__version__  # the Gradio these tests run against
    assert data.title and data.emoji and data.license and data.python_version
    assert 0 < len(data.short_description) <= 60  # the Hub's limit


@pytest.mark.parametrize("name", NAMES)
def test_space_card_lists_the_model_the_app_loads_by_default(name):
    card = SpaceCard.load(SPACES / name / "README.md")
    default = re.search(r'os\.environ\.get\("MODEL_ID", "([^"]+)"\)', (SPACES / name / "app.py").read_text())
    assert default and card.data.models[0] == default[1]


def test_classifier_space_offers_every_zoo_image_classifier_and_the_clip_space_its_model():
    """The Hub links a Space to the models its header lists; the classifier Space offers (and so lists) each B-cos
    image classifier the catalogue publishes, ViTs and CNNs, and nothing else."""
    from bcos_zoo.training import get_task
    from bcos_zoo.zoo.recipes import RECIPES

    classifiers = set()
    for recipe in RECIPES.values():
        card = get_task(recipe).card
        if card.bcos and card.pipeline_tag == "image-classification":
            classifiers.add(recipe.hub_model_id)
    listed = SpaceCard.load(SPACES / "bcos-vit-explainer" / "README.md").data.models
    assert len(listed) == len(set(listed)) and set(listed) == classifiers
    assert {"bcos-zoo/bcos-vit-s", "bcos-zoo/bcos-resnet50", "bcos-zoo/bcos-densenet121"} <= classifiers
    assert not any("clip" in model for model in listed) and "bcos-zoo/vit-fashion-mnist" not in listed
    clip = SpaceCard.load(SPACES / "bcos-clip-explainer" / "README.md").data.models
    assert clip[0] == "bcos-zoo/bcos-clip-vit-b32" and "bcos-zoo/bcos-clip-rn50" in clip  # every B-cos CLIP, ResNet too
    assert not set(clip) & classifiers


@pytest.mark.parametrize("name", NAMES)
def test_requirements_cover_every_import_of_the_app_and_not_this_package(name):
    listed = requirements(name)
    assert {"torch", "transformers", "pillow", "numpy"} <= listed
    assert "bcos_zoo" not in listed and "bcos-zoo" not in listed
    third_party = imported_modules(SPACES / name / "app.py") - set(sys.stdlib_module_names) - {"gradio"}
    assert "bcos_zoo" not in third_party
    assert {DISTRIBUTIONS.get(module, module) for module in third_party} <= listed


@pytest.mark.parametrize("name", NAMES)
def test_bundled_examples_are_readable_photos(name):
    examples = sorted((SPACES / name / "examples").glob("*.jpg"))
    assert len(examples) >= 3
    for path in examples:
        with Image.open(path) as image:
            image.verify()
        assert path.stat().st_size < 200_000  # small enough to live in the Space repository
    app = (SPACES / name / "app.py").read_text()
    for referenced in re.findall(r'"examples" / "([^"]+)"', app):
        assert (SPACES / name / "examples" / referenced).is_file()


@pytest.mark.parametrize("name", NAMES)
def test_space_readme_is_the_card_rendered_from_hub_cards(name):
    from bcos_zoo.zoo.cards import render_space_card, space_card_body

    readme = (SPACES / name / "README.md").read_text()
    assert str(render_space_card(name, space_card_body(readme))) == readme, "run: python scripts/space_cards.py"


def odd_mode_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (5, 6, 4), dtype=np.uint8), "RGBA")
    palette = Image.fromarray(rng.integers(0, 4, (5, 6), dtype=np.uint8), "P")
    palette.info["transparency"] = 2
    return [
        Image.fromarray(rng.integers(0, 65536, (5, 6), dtype=np.uint16)),  # I;16
        Image.fromarray(rng.integers(0, 65536, (5, 6)).astype(np.int32)),  # I
        Image.fromarray(rng.random((5, 6), dtype=np.float32) * 7),  # F
        Image.fromarray(rng.random((5, 6), dtype=np.float32)),  # F in [0, 1]
        rgba.convert("L").convert("F"),  # F and I on the 8-bit scale, as Pillow converts
        rgba.convert("L").convert("I"),
        rgba,
        rgba.convert("LA"),
        palette,
        rgba.convert("CMYK"),
        rgba.convert("L"),
        keyed(rgba.convert("RGB")),  # a PNG tRNS colour
        keyed(rgba.convert("L")),
        keyed(Image.fromarray(rng.integers(0, 65536, (5, 6), dtype=np.uint16))),  # a 16-bit PNG's tRNS key
        keyed(Image.fromarray(rng.integers(0, 65536, (5, 6)).astype(np.int32))),
    ]


def keyed(image: Image.Image) -> Image.Image:
    """``image`` with its first pixel's colour marked transparent, as a PNG tRNS chunk does without an alpha band."""
    image.info["transparency"] = image.getpixel((0, 0))
    return image


@pytest.mark.parametrize("name", NAMES)
def test_the_app_reads_every_image_mode_as_the_package_does(name):
    """A Space cannot import bcos_zoo, so it carries its own to_rgb; it must give the pixels training saw."""
    tree = ast.parse((SPACES / name / "app.py").read_text())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "to_rgb")
    namespace = {"Image": Image, "np": np}
    exec(compile(ast.Module([function], type_ignores=[]), "app.py", "exec"), namespace)
    for image in odd_mode_images():
        np.testing.assert_array_equal(np.asarray(namespace["to_rgb"](image)), np.asarray(to_rgb(image)), image.mode)
