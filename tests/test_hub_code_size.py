"""A saved repo ships only the code its family uses, little enough that a user asked to read remote code can, and
none of it reaches into torch's private internals, into hooks, or into the platform. One underscore torch call is
allowed: ``torch._assert_async``, the range check that a captured graph keeps (torch has no public assert that a graph
keeps; it is documented in docs/models.md, with what a failed assert does to a CUDA process)."""

import ast
import re
from pathlib import Path

import pytest
import torch
from tiny_models import TINY_CLASSIFIERS

from bcos_zoo import BcosCLIPConfig, BcosCLIPModel


MODEL_FILES = {family: f"modeling_bcos_{family}.py" for family in TINY_CLASSIFIERS}
FAMILIES = {family: (build, MODEL_FILES[family]) for family, build in TINY_CLASSIFIERS.items()}
RN_TOWER = dict(model_type="bcos_clip_resnet", width=8, depths=[1, 1], num_attention_heads=4, image_size=32)
TEXT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
FAMILIES["clip-rn50"] = (  # the CLIP family with its other image tower
    lambda: BcosCLIPModel(BcosCLIPConfig(vision_config=RN_TOWER, text_config=TEXT, projection_dim=8)),
    "modeling_bcos_clip.py",
)
OTHER_FAMILIES = set(MODEL_FILES.values())  # every registered family's model file (tiny_models covers each)
# what the remote code must not do: private torch API, hook inspection, platform sniffing, imports by name
FORBIDDEN = [
    r"torch\.ops\.", r"torch\.utils\._", r"torch\._(?!assert_async\()", r"_python_dispatch", r"_forward_hooks",
    r"_backward_hooks", r"_forward_pre_hooks", r"import platform", r"sys\.platform", r"\bimportlib\b",
]  # fmt: skip


def code_lines(text: str) -> int:
    """Lines a reader audits: not blank, not a comment, not part of a docstring."""
    tree = ast.parse(text)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    lines = enumerate(text.splitlines(), 1)
    return sum(
        1 for number, line in lines if line.strip() and not line.strip().startswith("#") and number not in docstrings
    )


def test_code_lines_skip_blank_lines_comments_and_docstrings():
    text = '"""Module.\n\nMore."""\n\nimport torch  # why\n\n\ndef f():\n    """Doc."""\n    # note\n    return 1\n'
    assert code_lines(text) == 3


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folders = {}
    for family, (build, _) in FAMILIES.items():
        torch.manual_seed(0)
        folders[family] = tmp_path_factory.mktemp(family)
        build().save_pretrained(folders[family])
    return folders


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_repo_of_any_family_holds_at_most_1000_lines_of_code(saved, family):
    total = sum(code_lines(path.read_text()) for path in saved[family].glob("*.py"))
    assert total <= 1000, total


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_repo_holds_no_other_family_s_model_file(saved, family):
    names = {path.name for path in saved[family].glob("*.py")}
    own = FAMILIES[family][1]
    uses = {"modeling_bcos_vit.py"} if family == "clip" else set()  # the ViT CLIP's tower is the ViT backbone
    assert own in names and (names & OTHER_FAMILIES) == {own} | uses


def test_a_clip_repo_ships_its_own_image_tower_and_no_other(saved):
    vit, resnet = ({path.name for path in saved[key].glob("*.py")} for key in ("clip", "clip-rn50"))
    assert {"modeling_bcos_clip_vit.py", "modeling_bcos_vit.py"} <= vit
    assert not {"modeling_bcos_clip_resnet.py", "bcos_cnn.py"} & vit
    assert {"modeling_bcos_clip_resnet.py", "bcos_cnn.py"} <= resnet
    assert not {"modeling_bcos_clip_vit.py", "modeling_bcos_vit.py"} & resnet


def test_only_classifiers_ship_the_explanation_pipeline(saved):
    for family, folder in saved.items():
        assert (folder / "pipeline_bcos_explanation.py").exists() == (not family.startswith("clip")), family


@pytest.mark.parametrize("pattern", FORBIDDEN)
def test_the_hub_code_uses_no_private_torch_api_hooks_or_platform_checks(pattern):
    folder = Path(__import__("bcos_zoo.modeling", fromlist=["x"]).__file__).parent
    offenders = [path.name for path in folder.glob("*.py") if re.search(pattern, path.read_text())]
    assert offenders == []
