"""``from_bcos``: the models released with the authors' ``bcos`` package (``pip install bcos``) as bcos_zoo models.

The package's torch.hub entries (``bcos.models.pretrained``: ``resnet50``, ``convnext_tiny_bnu``,
``simple_vit_b_patch16_224``, ...) build B-cos networks that take the 6-channel encoding ``[x, 1 - x]``; a port
computes exactly what the package's model computes, but takes [0, 1] images and encodes them itself. Which family
ports which entry is the registry's ``bcos_entries``; each family's ``bcos_port`` does the work (reading the
package's models: ``conversion.bcos_package``).
"""

import os
import pickle
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from .families import FAMILIES


RANDOM = "random"  # ``weights=RANDOM``: the entry's architecture with the package's random initialisation
# A recipe names a standard twin of the package (a B-cosification source) as "bcos:<entry>", e.g.
# "bcos:standard_simple_vit_s_patch16_224", with its release weights file in the recipe's ``weights``.
BCOS_SOURCE_PREFIX = "bcos:"
STANDARD_PREFIX = "standard_"


def bcos_entry_family(entry: str):
    """The registered family that ports a ``bcos`` torch.hub entry; a clear error naming the supported ones."""
    for family in FAMILIES.values():
        if entry in family.bcos_entries:
            return family
    supported = ", ".join(sorted(name for family in FAMILIES.values() for name in family.bcos_entries))
    raise ValueError(f"{entry!r} is not a bcos model this package ports. Supported entries: {supported}.")


def bcos_module_family(model: nn.Module):
    """The registered family that ports a loaded ``bcos`` model, by its class."""
    kind = f"{type(model).__module__.split('.')[0]}.{type(model).__name__}"
    for family in FAMILIES.values():
        if family.bcos_port is not None and kind in family.bcos_module_types:
            return family
    supported = ", ".join(sorted(t for family in FAMILIES.values() for t in family.bcos_module_types))
    raise ValueError(f"A {kind} is not a bcos model this package ports. Supported: {supported}.")


def build_bcos_entry(entry: str, weights: str | os.PathLike | dict | None) -> nn.Module:
    """The package's model for ``entry`` with the release state dict ``weights`` (a file read with
    ``weights_only=True``, or a state dict), or its random initialisation when ``weights == "random"``."""
    bcos_entry_family(entry.removeprefix(STANDARD_PREFIX))  # unknown entries fail here, before the import
    try:
        from bcos.models import pretrained
    except ImportError as error:
        raise ImportError("Porting a bcos entry by name needs the authors' package: pip install bcos einops") from error
    if weights is None:
        raise ValueError(
            f"from_bcos({entry!r}) needs the release weights: weights='path/to/{entry}.pth' (the file the bcos "
            "package downloads), or weights='random' for the architecture with random weights."
        )
    random = isinstance(weights, str) and weights == RANDOM
    if not (random or isinstance(weights, dict)):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"No weights file at {path}")
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:  # objects beyond tensors, which weights_only=True does not run
            lines = str(error).strip().splitlines()
            detail = next((line.strip() for line in lines if "Unsupported" in line), lines[0])
            raise ValueError(
                f"{path} is not a plain state dict, as release files are: it holds objects that loading with "
                f"weights_only=True refuses to run ({detail}). Is it the right file?"
            ) from None
        except Exception as error:  # torch.load fails on damaged files in many ways (zip, pickle, key errors)
            raise ValueError(
                f"{path} cannot be read as a PyTorch weights file ({type(error).__name__}: "
                f"{str(error).strip().splitlines()[0][:200]}); a truncated or corrupt download? Download it again."
            ) from None
        if not isinstance(weights, dict):
            raise ValueError(f"{path} holds a {type(weights).__name__}, not a state dict.")
    model = getattr(pretrained, entry)(pretrained=False)
    if random:
        return model.eval()
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        # the first line only names the model class; the next one says what does not fit
        detail = (str(error).strip().splitlines() + [""])[1].strip()[:300]
        raise ValueError(
            f"The weights do not fit bcos entry {entry!r} ({detail}); is it the release file of another entry?"
        ) from None
    return model.eval()


def is_bcos_source(source: object) -> bool:
    """Whether a recipe's source names a standard model of the ``bcos`` package (``"bcos:<entry>"``)."""
    return isinstance(source, str) and source.startswith(BCOS_SOURCE_PREFIX)


def bcos_source_entry(source: str, weights: str | os.PathLike | None) -> str:
    """The standard twin a ``"bcos:<entry>"`` source names; a one-line error when it is none or lacks its weights."""
    entry = source.removeprefix(BCOS_SOURCE_PREFIX)
    twins = sorted(  # the twins of the B-cos entries of families that take the package's standard models
        STANDARD_PREFIX + name
        for family in FAMILIES.values()
        if any(kind.startswith("bcos.") for kind in family.module_types)
        for name in family.bcos_entries
    )
    if entry not in twins:
        raise ValueError(f"{source!r} names no standard model of the bcos package. Supported: bcos:<one of {twins}>.")
    if weights is None or (weights != RANDOM and not Path(weights).is_file()):
        raise ValueError(
            f"The source {source!r} needs its release weights file (--weights path/to/<its release file>, as the "
            "bcos package downloads it into ~/.cache/torch/hub/checkpoints/; docs/zoo.md names each entry's file); "
            f"got {weights!r}."
        )
    return entry


def load_bcos_source(source: str, weights: str | os.PathLike | None) -> nn.Module:
    """The ``bcos`` package's standard model that ``source = "bcos:<entry>"`` names, with its release weights."""
    return build_bcos_entry(bcos_source_entry(source, weights), weights)


def from_bcos(source: str | nn.Module, weights: str | os.PathLike | dict | None = None) -> PreTrainedModel:
    """The bcos_zoo transformers model that computes exactly what a ``bcos`` package model computes.

    ``source`` is a loaded ``bcos`` model, or a torch.hub entry name of the package with ``weights`` its release
    state-dict file (``weights="random"`` for random weights, never by default). The returned model takes [0, 1]
    images; the package's model takes their encoding ``[x, 1 - x]``.
    """
    if isinstance(source, str):
        family = bcos_entry_family(source)
        model = build_bcos_entry(source, weights)
    else:
        if weights is not None:
            raise ValueError("Pass weights only with an entry name; a loaded bcos model already has its weights.")
        family = bcos_module_family(source)
        model = source
    return family.bcos_port(model)
