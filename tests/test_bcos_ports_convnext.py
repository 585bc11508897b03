"""The bcos package's B-cos ConvNeXts ported exactly: every entry (convnext_tiny/base with position norms,
convnext_tiny_bnu/base_bnu with uncentred BatchNorm) computes the package's logits and explanations, in float64 on
64 px images (the architecture takes any multiple of 32; the ConvNeXt-B entries at full size would take minutes).

Random B = 2 networks output almost only the logit bias, so the package's model is first made to compute something:
layer scales and normalisation weights of order one (the package initialises layer scale at 1e-6, which would hide
every block) and BatchNorm statistics calibrated on random batches. Then logits minus their mean over classes, the
logit level, and the package's own contribution map of one image are compared. The port is exact to round-off;
the tolerances asked of every port (1e-5 relative logits, 1e-4 relative contributions) are checked much tighter.
"""

import functools
import json

import numpy as np
import pytest
import torch
from cnn_sources import single_thread  # noqa: F401
from PIL import Image
from transformers import AutoModel, AutoModelForImageClassification

from bcos_zoo import BcosConvNextConfig, BcosConvNextForImageClassification, BcosConvNextModel, from_bcos
from bcos_zoo.conversion.convnext import port_bcos_convnext


pytest.importorskip("bcos")
from bcos.models import convnext as bcos_convnext  # noqa: E402
from bcos.models import pretrained  # noqa: E402
from bcos.modules import BcosConv2d, norms  # noqa: E402


SIZE = 64
ENTRIES = {
    "convnext_tiny": ("position", [96, 192, 384, 768], [3, 3, 9, 3], 0.1),
    "convnext_tiny_bnu": ("batch", [96, 192, 384, 768], [3, 3, 9, 3], 0.1),
    "convnext_base": ("position", [128, 256, 512, 1024], [3, 3, 27, 3], 0.5),
    "convnext_base_bnu": ("batch", [128, 256, 512, 1024], [3, 3, 27, 3], 0.5),
}
ENTRY_PARAMS = [  # the quick selection (-m "not slow") ports the smallest entry
    name if name == "convnext_tiny" else pytest.param(name, marks=pytest.mark.slow) for name in ENTRIES
]


def encode(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, 1 - x], dim=1)


def settle_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Layer scales and normalisation weights of order one, BatchNorm statistics from random batches; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("layer_scale") or (parameter.ndim == 1 and name.endswith("weight")):
                parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator, dtype=parameter.dtype))
            elif name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for norm in batch_norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2 if batch_norms else 0):
            model(encode(torch.rand(4, 3, SIZE, SIZE, generator=generator, dtype=torch.float64)))
    return model.eval()


@functools.cache
def ported(entry: str) -> tuple[torch.nn.Module, BcosConvNextForImageClassification]:
    torch.manual_seed(0)
    model = settle_(getattr(pretrained, entry)(pretrained=False).double())
    return model, from_bcos(model)


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def assert_same_function(model: torch.nn.Module, port, x: torch.Tensor, rtol: float = 1e-9) -> None:
    with torch.no_grad():
        reference, logits = model(encode(x)), port(pixel_values=x).logits
    centred, ours = reference - reference.mean(1, keepdim=True), logits - logits.mean(1, keepdim=True)
    assert centred.abs().max() > 1e-3  # the network computes something besides the logit bias
    assert (ours - centred).abs().max() <= rtol * centred.abs().max()
    assert (logits.mean(1) - reference.mean(1)).abs().max() <= rtol


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_the_port_computes_the_package_logits(entry):
    model, port = ported(entry)
    assert port.dtype == torch.float64
    assert_same_function(model, port, images())


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_the_port_explains_as_the_package_does(entry):
    model, port = ported(entry)
    x = images(1, seed=2)
    with pytest.warns(UserWarning, match="did not require grad"):
        reference = model.explain(encode(x))
    explanation = port.explain(x)
    assert explanation.target.item() == reference["explained_class_idx"]
    contributions = reference["contribution_map"]
    assert (explanation.contributions - contributions).abs().max() <= 1e-8 * contributions.abs().max()
    # what no pixel accounts for is the logit bias alone: every constant of the package's model is gone
    assert explanation.bias.item() == pytest.approx(model.logit_layer.logit_bias, abs=1e-9)


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_the_config_records_the_entry_s_architecture_and_test_transform(entry):
    norm_type, hidden_sizes, depths, drop_path_rate = ENTRIES[entry]
    model, port = ported(entry)
    config = port.config
    assert (config.norm_type, config.hidden_sizes, config.depths) == (norm_type, hidden_sizes, depths)
    assert config.drop_path_rate == pytest.approx(drop_path_rate)
    assert config.layer_norm_eps == 1e-6 and config.batch_norm_eps == 1e-5 and not config.use_bias
    assert config.resolved_logit_bias == pytest.approx(-np.log(999))
    assert config.id2label[0] == "tench" and config.num_labels == 1000
    processor = port.default_image_processor()
    assert processor.size == {"shortest_edge": 232} and processor.crop_size == {"height": 224, "width": 224}
    assert (model.transform.resize.size, model.transform.center_crop.size) == (232, (224, 224))
    assert sum(p.numel() for p in port.parameters()) == sum(p.numel() for p in model.parameters())


def test_an_entry_name_and_its_release_file_port_the_same_model(tmp_path):
    model, port = ported("convnext_tiny_bnu")
    release = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(release, tmp_path / "release.pth")
    by_name = from_bcos("convnext_tiny_bnu", weights=tmp_path / "release.pth")
    assert type(by_name) is BcosConvNextForImageClassification and by_name.dtype == torch.float32
    for key, value in port.state_dict().items():
        torch.testing.assert_close(by_name.state_dict()[key].to(value.dtype), value, rtol=1e-6, atol=1e-7, msg=key)


def atto(**kwargs) -> torch.nn.Module:
    """A small bcos ConvNeXt (ConvNeXt-atto widths, one block per stage) with the experiments' B-cos convolution."""
    setting = [bcos_convnext.CNBlockConfig(16, 32, 1), bcos_convnext.CNBlockConfig(32, None, 1)]
    kwargs = {"num_classes": 5, "conv_layer": functools.partial(BcosConv2d, b=2), **kwargs}
    torch.manual_seed(0)
    return bcos_convnext.BcosConvNeXt(setting, **kwargs).double()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(logit_temperature=2.5, logit_bias=-1.0),  # the temperature folds into the classifier
        dict(norm_layer=functools.partial(norms.DetachablePositionNorm2d, eps=1e-6)),  # position norms with biases
        dict(norm_layer=norms.NoBias(norms.BatchNormUncentered2d), stochastic_depth_prob=0.3),
    ],
    ids=["temperature", "position-norm-biases", "bnu"],
)
def test_the_package_s_other_convnext_options_port_exactly(kwargs):
    model = settle_(atto(**kwargs))
    port = port_bcos_convnext(model)
    assert_same_function(model, port, images(3))
    explanation = port.explain(images(1, seed=3))
    complete = explanation.contributions.sum((1, 2)) + port.config.resolved_logit_bias
    if not port.config.use_bias:
        torch.testing.assert_close(complete, explanation.target_logits, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(norm_layer=norms.NoBias(norms.DetachableGNLayerNorm2d)), "is a DetachableGNLayerNorm2d"),
        (dict(conv_layer=functools.partial(BcosConv2d, b=2, max_out=2)), "uses MaxOut"),
        (dict(conv_layer=functools.partial(BcosConv2d, b=1.5)), "B = 1.5"),
    ],
    ids=["group-norm", "max-out", "b"],
)
def test_a_convnext_the_port_cannot_reproduce_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=f"Cannot port this bcos ConvNeXt: .*{message}.*Supported"):
        port_bcos_convnext(atto(**kwargs))


def test_the_family_has_no_standard_sources():
    with pytest.raises(ValueError, match="no standard sources.*from_bcos"):
        BcosConvNextForImageClassification.from_pretrained_standard("facebook/convnext-tiny-224")


def tiny_config(**kwargs) -> BcosConvNextConfig:
    return BcosConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_labels=4, **kwargs)


def test_outputs_follow_the_flags_and_any_multiple_of_the_patch_grid_works():
    torch.manual_seed(0)
    model = BcosConvNextForImageClassification(tiny_config()).eval()
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        plain = model(pixel_values=x)
        assert plain.logits.shape == (2, 4) and plain.hidden_states is None
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
        assert [tuple(h.shape) for h in hidden] == [(2, 8, 10, 14), (2, 8, 10, 14), (2, 16, 5, 7)]
        logits, states = model(pixel_values=x, output_hidden_states=True, return_dict=False)
        assert torch.equal(logits, plain.logits) and len(states) == 3
        backbone = BcosConvNextModel(model.config).eval()
        out = backbone(pixel_values=x)
    assert out.last_hidden_state.shape == (2, 16, 5, 7) and out.pooler_output.shape == (2, 16, 1, 1)
    assert AutoModelForImageClassification.from_config(model.config).__class__ is BcosConvNextForImageClassification
    assert AutoModel.from_config(model.config).__class__ is BcosConvNextForImageClassification


@pytest.mark.parametrize("norm_type", ["position", "batch"])
def test_gradient_checkpointing_replays_stochastic_depth_and_batch_statistics(norm_type):
    """The checkpointed stages draw the same drop-path masks again and count each batch once."""
    torch.manual_seed(0)
    model = BcosConvNextForImageClassification(tiny_config(norm_type=norm_type, drop_path_rate=0.5)).double().train()
    x, labels = torch.rand(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    model(pixel_values=x, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    after = {k: v.clone() for k, v in model.state_dict().items()}
    model.zero_grad()
    model.load_state_dict(start)
    model.activation_checkpointing_enable()
    assert all(stage.gradient_checkpointing for stage in model.bcos_convnext.encoder.stages)
    torch.manual_seed(1)
    model(pixel_values=x, labels=labels).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], rtol=1e-8, atol=1e-12, msg=name)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, after[name], msg=name)


@pytest.mark.parametrize("norm_type", ["position", "batch"])
def test_training_mode_explanations_are_complete(norm_type):
    """With batch statistics and random drop paths the model is still dynamic linear in each image."""
    torch.manual_seed(0)
    model = BcosConvNextForImageClassification(tiny_config(norm_type=norm_type, drop_path_rate=0.3)).double().train()
    torch.manual_seed(2)
    explanation = model.explain(torch.rand(3, 3, 32, 32, dtype=torch.float64))
    complete = explanation.contributions.sum((1, 2)) + model.config.resolved_logit_bias
    torch.testing.assert_close(complete, explanation.target_logits, rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bcos_convnext")
    model = settle_(atto(num_classes=4, norm_layer=norms.NoBias(norms.BatchNormUncentered2d)))
    port = port_bcos_convnext(model).float()
    port.save_pretrained(folder)
    x = torch.rand(3, 3, 40, 48)
    with torch.no_grad():
        torch.save({"x": x, "logits": port(pixel_values=x).logits}, folder / "expected.pt")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / "cat.png")
    return folder, port


def test_the_saved_folder_holds_code_processor_and_auto_map(saved):
    folder, port = saved
    config = json.loads((folder / "config.json").read_text())
    classifier = "modeling_bcos_convnext.BcosConvNextForImageClassification"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_bcos_convnext.BcosConvNextConfig",
        "AutoModelForImageClassification": classifier,
        "AutoModel": classifier,
    }
    for name in ("modeling_bcos_convnext.py", "configuration_bcos_convnext.py", "bcos_cnn.py", "bcos_layers.py"):
        assert (folder / name).exists(), name
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["do_normalize"] is False and processor["size"] == {"shortest_edge": 232}
    assert processor["crop_size"] == {"height": 224, "width": 224} and processor["do_center_crop"]


@pytest.mark.subprocess
def test_a_port_reloads_as_remote_code_without_bcos_zoo(saved, clean_python):
    folder, port = saved
    out = clean_python(
        f"""
        import json, torch
        torch.set_num_threads(1)
        from PIL import Image
        from transformers import AutoModel, AutoModelForImageClassification, pipeline

        folder = {str(folder)!r}
        data = torch.load(folder + "/expected.pt")
        classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            diffs = [(m(pixel_values=data["x"]).logits - data["logits"]).abs().max().item() for m in (classifier, base)]
        explanation = classifier.double().explain(data["x"].double())
        completeness = (explanation.contributions.sum((1, 2)) + explanation.bias - explanation.target_logits).abs()
        pipe = pipeline("image-classification", model=folder, trust_remote_code=True)
        predictions = pipe(Image.open(folder + "/cat.png"), top_k=4)
        print(json.dumps(dict(
            diffs=diffs,
            module=type(classifier).__module__,
            bias=explanation.bias.tolist(),
            completeness=completeness.max().item(),
            predictions=predictions,
        )))
        """,
        cwd=folder,
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert max(result["diffs"]) <= 1e-6
    assert result["module"].startswith("transformers_modules.")
    assert result["completeness"] <= 1e-10
    assert result["bias"] == pytest.approx([port.config.resolved_logit_bias] * 3, abs=1e-8)
    assert sorted(p["label"] for p in result["predictions"]) == sorted(port.config.id2label.values())
