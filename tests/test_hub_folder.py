"""The Hub folder holds what a loaded model needs and nothing more: no converters, no training code."""

import pytest
from sources import hf_vit

from bcos_zoo import BcosViTForImageClassification


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bcos_vit")
    BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=3)).save_pretrained(folder)
    return folder


def test_remote_code_is_only_model_code(saved):
    code = {path.name: path.read_text() for path in saved.glob("*.py")}
    assert "modeling_bcos_vit.py" in code and "bcos_layers.py" in code
    assert not any(name.startswith("convert") for name in code)
    for name, text in code.items():
        forbidden = ("snapshot_download", "load_file(", "import timm", "from timm", "Trainer(", "from bcos_zoo")
        for training_or_conversion in (*forbidden, "import bcos_zoo"):
            assert training_or_conversion not in text, (name, training_or_conversion)


@pytest.mark.subprocess
def test_from_pretrained_standard_on_remote_code_says_what_to_install(saved, clean_python):
    output = clean_python(
        f"""
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained({str(saved)!r}, trust_remote_code=True)
        try:
            type(model).from_pretrained_standard("google/vit-base-patch16-224")
        except ImportError as error:
            print(error)
        """,
        cwd=saved,
    )
    (line,) = output.strip().splitlines()
    assert "pip install bcos_zoo" in line
