"""The authors' released B-cos CNNs (the ``bcos`` package's ResNet, ResNeXt, DenseNet and VGG entries) port exactly:
random weights with BatchNorm statistics calibrated on random batches, compared in float64 with the package's logits
and its own explanation; and ``from_bcos`` refuses what it cannot port with a one-line reason."""

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
from cnn_sources import single_thread  # noqa: F401
from PIL import Image
from safetensors.torch import save_file
from torch import nn


bcos_pretrained = pytest.importorskip("bcos.models.pretrained")

from bcos_zoo import (  # noqa: E402
    BcosDenseNetForImageClassification,
    BcosResNetForImageClassification,
    BcosVGGForImageClassification,
    from_bcos,
)


# entry -> (class, image size of the check): the deep ones at 32 px (their last feature map is then 1x1)
ENTRIES = {
    "resnet18": (BcosResNetForImageClassification, 64),
    "resnet34": (BcosResNetForImageClassification, 64),
    "resnet50": (BcosResNetForImageClassification, 64),
    "resnet101": (BcosResNetForImageClassification, 32),
    "resnet152": (BcosResNetForImageClassification, 32),
    "resnet50_long": (BcosResNetForImageClassification, 48),
    "resnet152_long": (BcosResNetForImageClassification, 32),
    "resnext50_32x4d": (BcosResNetForImageClassification, 48),
    "densenet121": (BcosDenseNetForImageClassification, 64),
    "densenet161": (BcosDenseNetForImageClassification, 32),
    "densenet169": (BcosDenseNetForImageClassification, 48),
    "densenet201": (BcosDenseNetForImageClassification, 32),
    "densenet121_long": (BcosDenseNetForImageClassification, 48),
    "vgg11_bnu": (BcosVGGForImageClassification, 32),
}
# the entries trained longer are evaluated after resizing to 232 instead of 256
RESIZE = {"resnet50_long": 232, "resnet152_long": 232, "densenet121_long": 232}


def encode(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, 1 - x], dim=1)


def calibrate_(model: nn.Module, size: int, batches: int = 2, seed: int = 0) -> nn.Module:
    """BatchNorm running statistics from random batches (a random B = 2 network outputs almost only its logit bias
    otherwise), with the cumulative average, then evaluation mode."""
    generator = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(encode(torch.rand(2, 3, size, size, generator=generator, dtype=dtype)))
    return model.eval()


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


# the quick selection (-m "not slow") ports the smallest entry of each block kind; the deeper and wider ones take
# seconds each (VGG-11's classifier alone holds 120M weights)
QUICK = {"resnet18", "resnet50", "densenet121"}


@pytest.mark.parametrize(
    "entry", [entry if entry in QUICK else pytest.param(entry, marks=pytest.mark.slow) for entry in ENTRIES]
)
def test_port_computes_the_package_model_s_logits_and_explanation(entry):
    cls, size = ENTRIES[entry]
    torch.manual_seed(0)
    theirs = calibrate_(getattr(bcos_pretrained, entry)(pretrained=False).double(), size)
    ours = from_bcos(theirs)
    assert type(ours) is cls and not ours.training and ours.dtype == torch.float64

    x = torch.rand(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, logits = theirs(encode(x)), ours(pixel_values=x).logits
    centred = expected - expected.mean(dim=1, keepdim=True)
    assert relative(logits - logits.mean(dim=1, keepdim=True), centred) <= 1e-5
    assert float((logits.mean(dim=1) - expected.mean(dim=1)).abs().max()) <= 1e-5

    explained = theirs.explain(encode(x[:1]).requires_grad_(True))
    explanation = ours.explain(x[:1], target=explained["explained_class_idx"])
    assert int(explanation.logits.argmax()) == explained["prediction"]
    assert relative(explanation.contributions, explained["contribution_map"].detach()) <= 1e-4

    config = ours.config
    assert config.hidden_act is None and config.normalize_weights and not config.use_bias
    assert config.logit_bias == pytest.approx(-math.log(999))
    assert config.image_size == 224 and 224 / config.crop_pct == pytest.approx(RESIZE.get(entry, 256))
    assert config.id2label[0] == "tench" and len(config.id2label) == 1000


def test_a_release_file_loads_with_weights_only_and_ports_as_the_model_does(tmp_path):
    torch.manual_seed(0)
    theirs = calibrate_(bcos_pretrained.resnet18(pretrained=False), 32)
    torch.save(theirs.state_dict(), tmp_path / "resnet_18-68b4160fff.pth")  # the release files are state dicts
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = from_bcos(theirs)(pixel_values=x).logits
        for weights in (tmp_path / "resnet_18-68b4160fff.pth", str(tmp_path / "resnet_18-68b4160fff.pth")):
            assert torch.equal(from_bcos("resnet18", weights=weights)(pixel_values=x).logits, expected)
        assert torch.equal(from_bcos("resnet18", weights=theirs.state_dict())(pixel_values=x).logits, expected)
    assert isinstance(from_bcos("resnet18", weights="random"), BcosResNetForImageClassification)


def test_a_pickled_model_is_not_unpickled(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "model.pth")  # a whole module: only unpickling arbitrary code reads it
    with pytest.raises(ValueError, match="not a plain state dict.*weights_only=True"):
        from_bcos("resnet18", weights=tmp_path / "model.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        from_bcos("resnet18", weights=tmp_path / "list.pth")


def test_weights_of_another_entry_are_refused(tmp_path):
    torch.save(bcos_pretrained.resnet18(pretrained=False).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"do not fit bcos entry 'resnet34' \(Missing key.*release file of another"):
        from_bcos("resnet34", weights=tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"do not fit bcos entry 'densenet121' \(.*\)"):
        from_bcos("densenet121", weights=tmp_path / "resnet18.pth")


def test_unknown_entries_and_missing_weights_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'resnet9' is not a bcos model.*densenet121_long.*resnext50_32x4d.*vgg11"):
        from_bcos("resnet9", weights="random")
    with pytest.raises(ValueError, match=r"needs the release weights: weights='path/to/vgg11_bnu.pth'"):
        from_bcos("vgg11_bnu")
    with pytest.raises(FileNotFoundError, match="No weights file"):
        from_bcos("vgg11_bnu", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="Pass weights only with an entry name"):
        from_bcos(bcos_pretrained.resnet18(pretrained=False), weights="random")
    with pytest.raises(ValueError, match=r"A torch.Linear is not a bcos model this package ports.*bcos.BcosVGG"):
        from_bcos(nn.Linear(2, 2))


@pytest.mark.parametrize("family", ["resnet", "densenet", "vgg"])
def test_a_family_port_refuses_another_familys_model(family):
    from bcos_zoo.conversion import densenet, resnet, vgg

    port = {"resnet": resnet.port_bcos_resnet, "densenet": densenet.port_bcos_densenet, "vgg": vgg.port_bcos_vgg}
    other = bcos_pretrained.vgg11_bnu if family != "vgg" else bcos_pretrained.resnet18
    kind = {"resnet": "ResNet", "densenet": "DenseNet", "vgg": "VGG"}[family]
    with pytest.raises(ValueError, match=rf"A Bcos\w+ is not a bcos {kind}\. Supported: the bcos package's"):
        port[family](other(pretrained=False))


def _position_norm_resnet():
    from bcos.models.resnet import resnet18

    return resnet18()  # the model module's default normalisation: position norm, not the released BatchNorm


def _dilated_resnet():
    from bcos.models.resnet import resnet50
    from bcos.modules import norms

    return resnet50(norm_layer=norms.NoBias(norms.BatchNormUncentered2d), replace_stride_with_dilation=[0, 0, 1])


def _max_out_densenet():
    return bcos_pretrained.densenet121(pretrained=False, bcos_args=dict(b=2, max_out=2))


def _b_2_5_resnet():
    return bcos_pretrained.resnet18(pretrained=False, bcos_args=dict(b=2.5))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_position_norm_resnet, "is a DetachablePositionNorm2d, which has no counterpart here"),
        (_dilated_resnet, r"layer4.0.conv2 \(kernel, stride, padding, dilation, groups\)"),
        (_max_out_densenet, "uses MaxOut"),
        (_b_2_5_resnet, r"B = 2.5 does not port exactly: .* \|cos\| \+ 1e-6"),
    ],
    ids=["position-norm", "dilation", "max-out", "b-2.5"],
)
def test_package_models_unlike_the_released_ones_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        from_bcos(build())


def test_standard_vggs_are_not_b_cosified():
    with pytest.raises(ValueError, match="B-cosifying a standard VGG is not supported.*vgg11_bnu"):
        BcosVGGForImageClassification.from_pretrained_standard(nn.Linear(2, 2))


def tiny_bcos_vgg(num_classes: int = 4) -> nn.Module:
    """A genuine ``bcos`` ``BcosVGG``, small: its 4096-wide fully connected layers are fixed in the package, so the
    model is made on the meta device and given small features and head."""
    from bcos.models.vgg import BcosVGG, make_layers
    from bcos.modules import BcosConv2d, norms

    conv = partial(BcosConv2d, b=2)
    with torch.device("meta"):
        model = BcosVGG(nn.Identity(), num_classes, conv_layer=conv, logit_bias=-math.log(num_classes - 1))
    model.features = make_layers([8, "M", 16, 16, "M"], norms.NoBias(norms.BatchNormUncentered2d), conv)
    model.classifier = nn.Sequential(conv(16, 12, 3, padding=1), conv(12, 12), conv(12, num_classes))
    return calibrate_(model, 32)


def test_vgg_port_reads_the_architecture_from_the_model():
    torch.manual_seed(0)
    theirs = tiny_bcos_vgg().double()
    ours = from_bcos(theirs)
    config = ours.config
    assert (config.hidden_sizes, config.depths, config.head_size, config.head_kernel_size) == ([8, 16], [1, 2], 12, 3)
    x = torch.rand(2, 3, 36, 28, dtype=torch.float64)
    with torch.no_grad():
        assert relative(ours(pixel_values=x).logits, theirs(encode(x))) <= 1e-12


@pytest.fixture(scope="module")
def saved_vgg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bcos_vgg")
    torch.manual_seed(0)
    model = from_bcos(tiny_bcos_vgg())
    model.save_pretrained(folder)
    x = torch.rand(3, 3, 36, 44)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    save_file({"x": x, "logits": logits}, folder / "expected.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / "cat.png")
    return folder, model


def test_saved_vgg_folder_holds_its_code_and_auto_map(saved_vgg):
    folder, model = saved_vgg
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_bcos_vgg.BcosVGGConfig",
        "AutoModelForImageClassification": "modeling_bcos_vgg.BcosVGGForImageClassification",
        "AutoModel": "modeling_bcos_vgg.BcosVGGForImageClassification",
    }
    names = {path.name for path in folder.glob("*.py")}
    assert {"modeling_bcos_vgg.py", "configuration_bcos_vgg.py", "bcos_cnn.py", "bcos_layers.py"} <= names
    assert not names & {"modeling_bcos_resnet.py", "modeling_bcos_densenet.py", "modeling_bcos_vit.py"}


@pytest.mark.subprocess
def test_ported_vgg_loads_as_remote_code_without_bcos_zoo(saved_vgg, clean_python):
    folder, model = saved_vgg
    out = clean_python(
        f"""
        import json, torch
        torch.set_num_threads(1)
        from PIL import Image
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForImageClassification, pipeline

        folder = {str(folder)!r}
        data = load_file(folder + "/expected.safetensors")
        classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            diffs = [(m(pixel_values=data["x"]).logits - data["logits"]).abs().max().item() for m in (classifier, base)]
        explanation = classifier.double().explain(data["x"].double())
        bias = (explanation.bias - classifier.config.logit_bias).abs().max().item()
        pipe = pipeline("image-classification", model=folder, trust_remote_code=True)
        predictions = pipe(Image.open(folder + "/cat.png"), top_k=4)
        print(json.dumps(dict(
            diffs=diffs,
            module=type(classifier).__module__,
            bias=bias,
            predictions=predictions,
        )))
        """,
        cwd=folder,
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert max(result["diffs"]) <= 1e-6
    assert result["module"].startswith("transformers_modules.")
    assert result["bias"] <= 1e-9  # the pixels account for all of each logit but the logit bias
    assert sorted(p["label"] for p in result["predictions"]) == sorted(model.config.id2label.values())
    assert sum(p["score"] for p in result["predictions"]) == pytest.approx(1.0, abs=1e-4)
