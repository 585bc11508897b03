"""The models released with the authors' ``bcos`` package, published as Hub repos: which release file holds which
torch.hub entry, what the authors report for it, and the port of a release file to a repo folder.

Everything about a release is read from the installed package (``bcos.models.pretrained``): the file name from
``URLS`` for the experiment that the entry function loads, the test transform from that experiment's config, and
the accuracy and size from the entry function's docstring. Nothing is downloaded here: the package downloads its
release files itself (``entry(pretrained=True)``, into torch.hub's cache); this module reads them from disk.
``scripts/port_bcos.py`` is its command-line face.
"""

import contextlib
import copy
import functools
import hashlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
from huggingface_hub import ModelCard
from torch import nn
from transformers import PreTrainedModel

from ..ports import STANDARD_PREFIX, bcos_entry_family, build_bcos_entry, from_bcos
from .hub import check_repo_id, new_repo_folder


DEFAULT_ORG = "bcos-zoo"
REPOSITORY = "https://github.com/B-cos/B-cos-v2"


@dataclass(frozen=True)
class Release:
    """One torch.hub entry of the ``bcos`` package and its release file, as the package describes them."""

    entry: str  # "resnet50_long"
    file_name: str  # "resnet_50_long-ef38a88533.pth": the experiment's name and the start of the file's SHA-256
    title: str  # the entry's own one-line description, e.g. "B-cos ResNet-50"
    top1: float | None  # ImageNet top-1 and top-5 accuracy (%) and parameter count as the docstring reports them
    top5: float | None
    params: str | None  # "25.54M"
    resize: int  # the test transform: resize the shorter side to ``resize`` (``interpolation``), crop ``crop``
    crop: int
    interpolation: str

    @property
    def standard(self) -> bool:
        """A standard (not B-cos) twin: a B-cosification source, not a model this zoo publishes as it is."""
        return self.entry.startswith(STANDARD_PREFIX)

    @property
    def sha256_prefix(self) -> str:
        return self.file_name.rsplit(".", 1)[0].rsplit("-", 1)[-1]


class _Recorded(Exception):
    """Stops an entry function at the model it would build (see :func:`_experiment`)."""


def _experiment(pretrained, entry: str) -> dict:
    """The arguments the entry function passes to the package's ``_get_model`` (experiment name, base network,
    dataset), recorded by calling it with ``_get_model`` replaced: nothing is built and nothing is downloaded."""
    signature = inspect.signature(pretrained._get_model)
    recorded = {}

    def record(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        recorded.update(bound.arguments)
        raise _Recorded

    with mock.patch.object(pretrained, "_get_model", record), contextlib.suppress(_Recorded):
        getattr(pretrained, entry)(pretrained=True)
    if not recorded:
        raise RuntimeError(f"The bcos entry {entry!r} loads no experiment through bcos.models.pretrained._get_model.")
    return recorded


def _reported(docstring: str, name: str) -> str | None:
    """A value of the ``Name | Value`` table in an entry's docstring (``Acc@1``, ``Acc@5``, ``#Params``)."""
    match = re.search(rf"{re.escape(name)}\s*\|\s*([0-9.]+\s*[%MK]?)", docstring)
    return match.group(1).replace(" ", "") if match else None


def _percent(value: str | None) -> float | None:
    return float(value.rstrip("%")) if value else None


@functools.cache
def releases() -> dict[str, Release]:
    """Every torch.hub entry of the installed ``bcos`` package (26 B-cos models, 8 standard twins), by name."""
    try:
        from bcos.experiments.utils import Experiment
        from bcos.models import pretrained
    except ImportError as error:
        raise ImportError(
            "The bcos release files are described by the authors' package: pip install bcos einops"
        ) from error
    found = {}
    for entry in pretrained.list_available():
        arguments = _experiment(pretrained, entry)
        name, base = arguments["experiment_name"], arguments["base_network"]
        transform = Experiment(arguments["dataset"], base, name).config["data"]["test_transform"].args
        docstring = inspect.getdoc(getattr(pretrained, entry)) or ""
        interpolation = transform.get("interpolation", "bilinear")
        found[entry] = Release(
            entry=entry,
            file_name=pretrained.URLS[base][name].rsplit("/", 1)[-1],
            title=docstring.splitlines()[0].strip().rstrip(".") if docstring else entry,
            top1=_percent(_reported(docstring, "Acc@1")),
            top5=_percent(_reported(docstring, "Acc@5")),
            params=_reported(docstring, "#Params"),
            resize=int(transform["resize_size"]),
            crop=int(transform["crop_size"]),
            interpolation=str(getattr(interpolation, "value", interpolation)),
        )
    return found


def release_of_file(path: str | Path) -> Release | None:
    """The release whose file name (as the package names it, and torch.hub saves it) ``path`` has; None if none."""
    name = Path(path).name
    return next((release for release in releases().values() if release.file_name == name), None)


def get_release(entry: str) -> Release:
    """The release of a B-cos entry; a one-line error for an unknown entry or a standard twin."""
    if entry.startswith(STANDARD_PREFIX) and entry in releases():
        raise ValueError(
            f"{entry!r} is a standard (not B-cos) model of the bcos package: it is not ported as it is, it is the "
            f"source that B-cosification starts from ({twin_recipe_hint(entry)})."
        )
    bcos_entry_family(entry)  # an unknown entry: the error names the supported ones
    return releases()[entry]


def twin_recipe_hint(entry: str) -> str:
    """How a standard twin is used: the recipe that B-cosifies it, with its release file."""
    from .recipes import RECIPES

    names = [name for name, recipe in RECIPES.items() if recipe.source == f"bcos:{entry}"]
    if not names:
        return "BcosSimpleViTForImageClassification.from_pretrained_standard(<the loaded model>)"
    return f"python scripts/finetune.py --recipe {names[0]} --weights {releases()[entry].file_name}"


def default_repo_id(entry: str, org: str = DEFAULT_ORG) -> str:
    """The Hub id the zoo gives a port: ``bcos-zoo/bcos-v2-resnet50-long`` (B-cos v2: the authors' release)."""
    return f"{org}/bcos-v2-{entry.replace('_', '-')}"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ConversionError:
    """How far the port's logits are from the package model's on the same random images in [0, 1]."""

    images: int
    size: int
    max_abs: dict[str, float] = field(default_factory=dict)  # by dtype name: the largest |difference| of a logit
    max_rel: dict[str, float] = field(default_factory=dict)  # the same, divided by the largest |logit|

    def describe(self) -> str:
        return "; ".join(
            f"{dtype}: max |difference| {self.max_abs[dtype]:.2e} (relative {self.max_rel[dtype]:.2e})"
            for dtype in self.max_abs
        )


@torch.no_grad()
def conversion_error(theirs: nn.Module, ours: PreTrainedModel, images: int = 2, seed: int = 0) -> ConversionError:
    """Compare the logits of the package model (on ``[x, 1 - x]``) and of its port (on ``x``) for ``images`` random
    images at the model's crop size, in float64 (the port itself) and in float32 (what users run)."""
    size = int(ours.config.image_size)
    x = torch.rand(images, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    error = ConversionError(images, size)
    for dtype in (torch.float64, torch.float32):
        package, port = copy.deepcopy(theirs).to(dtype).eval(), copy.deepcopy(ours).to(dtype).eval()
        device = next(port.parameters()).device
        pixels = x.to(device, dtype)
        reference = package(torch.cat([pixels, 1 - pixels], 1)).double()
        difference = (port(pixel_values=pixels).logits.double() - reference).abs().max().item()
        name = str(dtype).removeprefix("torch.")
        error.max_abs[name] = difference
        error.max_rel[name] = difference / max(reference.abs().max().item(), 1e-30)
        del package, port
    return error


@dataclass
class Port:
    """A release file written as a Hub repo folder."""

    release: Release
    repo_id: str
    folder: Path
    error: ConversionError
    sha256_matches: bool
    parameters: int


RELEASE_TAG = "bcos-v2"  # every release card's tag: what tells a previous port from a folder of the user's


def is_release_port(folder: Path) -> bool:
    """Whether ``folder`` holds a port this module wrote: a model card tagged :data:`RELEASE_TAG`."""
    card = folder / "README.md"
    try:
        return card.is_file() and RELEASE_TAG in (ModelCard.load(card).data.tags or [])
    except Exception:  # a card whose metadata does not parse (YAML errors have no common base here) is none of ours
        return False


def check_port_folder(folder: Path) -> None:
    """Refuse a ``folder`` that holds anything but a previous port (which the port replaces)."""
    if folder.is_file() or (folder.is_dir() and any(folder.iterdir()) and not is_release_port(folder)):
        raise ValueError(
            f"{folder} exists and does not hold a ported release (no model card tagged {RELEASE_TAG}); it is left as "
            "it is: choose another --output-dir."
        )


def port_release(
    entry: str, weights: str | Path, repo_id: str, folder: str | Path, check_images: int = 2, command: str = ""
) -> Port:
    """Port the release file ``weights`` of ``entry`` into ``folder``: weights (safetensors), config, remote code,
    the entry's image processor and a model card with the authors' numbers and the measured conversion error."""
    from .cards import render_release_card

    release = get_release(entry)
    check_repo_id(repo_id)  # the card names the repo, so a dry run checks it too
    theirs = build_bcos_entry(entry, weights)  # a missing file, or weights that do not fit, fail here
    ours = from_bcos(theirs)
    error = conversion_error(theirs, ours, images=check_images)
    port = Port(
        release=release,
        repo_id=repo_id,
        folder=Path(folder),
        error=error,
        sha256_matches=sha256_of(weights).startswith(release.sha256_prefix),
        parameters=sum(parameter.numel() for parameter in ours.parameters()),
    )
    check_port_folder(port.folder)
    with new_repo_folder(port.folder) as partial:  # a port stopped part-way leaves an earlier one as it was
        ours.save_pretrained(partial)
        render_release_card(port, ours, command=command).save(partial / "README.md")
    return port
