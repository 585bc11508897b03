"""B-cosification at b=1, bias="keep" is the source model: same logits, from every supported kind of source."""

import json

import pytest
import torch
from safetensors.torch import save_file
from sources import IMAGENET_MEAN, IMAGENET_STD, hf_vit, normalize, save_hf_source, timm_vit
from transformers import ViTImageProcessor

from bcos_zoo import BcosViTForImageClassification


TOLERANCE = 1e-4


def max_logit_diff(source_logits, bcos, pixel_values) -> float:
    with torch.no_grad():
        return (source_logits - bcos(pixel_values=pixel_values).logits).abs().max().item()


@pytest.mark.parametrize(
    "shape",
    [
        dict(hidden=48, layers=2, heads=3, mlp=96, image=32, patch=8),
        dict(hidden=384, layers=1, heads=6, mlp=1536, image=32, patch=16),  # ViT-S width
        dict(hidden=64, layers=3, heads=4, mlp=128, image=24, patch=4, act="gelu_new", qkv_bias=False),
    ],
    ids=["tiny", "vit-s-width", "tanh-gelu-no-qkv-bias"],
)
def test_hf_vit_folder_is_reproduced_exactly(tmp_path, shape):
    source = hf_vit(**shape)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    save_hf_source(source, tmp_path, mean, std)
    bcos = BcosViTForImageClassification.from_pretrained_standard(tmp_path, b=1, bias="keep").eval()
    x = torch.rand(3, 3, shape["image"], shape["image"])
    with torch.no_grad():
        expected = source(pixel_values=normalize(x, mean, std)).logits
    assert max_logit_diff(expected, bcos, x) <= TOLERANCE
    assert bcos.config.id2label == source.config.id2label


def test_deit_checkpoint_is_reproduced_exactly(tmp_path):
    """Non-distilled DeiT checkpoints are ViT classifiers with ImageNet normalisation and a 384/6-head body."""
    source = hf_vit(hidden=384, layers=2, heads=6, mlp=1536, image=32, patch=16, labels=10, seed=3)
    save_hf_source(source, tmp_path, IMAGENET_MEAN, IMAGENET_STD)
    bcos = BcosViTForImageClassification.from_pretrained_standard(tmp_path, b=1, bias="keep").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(pixel_values=normalize(x, IMAGENET_MEAN, IMAGENET_STD)).logits
    assert max_logit_diff(expected, bcos, x) <= TOLERANCE


def test_legacy_hub_key_names_load(tmp_path):
    """Hub ViT checkpoints predate transformers 5 and name their weights encoder.layer.N.attention.attention.*."""
    source = hf_vit()
    save_hf_source(source, tmp_path, (0.5,) * 3, (0.5,) * 3)
    renames = [
        ("vit.layers.", "vit.encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ]
    legacy = {}
    for key, value in source.state_dict().items():
        for old, new in renames:
            key = key.replace(old, new)
        legacy[key] = value.contiguous()
    assert any("attention.attention.query" in k for k in legacy)
    save_file(legacy, tmp_path / "model.safetensors", metadata={"format": "pt"})
    bcos = BcosViTForImageClassification.from_pretrained_standard(tmp_path, b=1, bias="keep").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(pixel_values=normalize(x, (0.5,) * 3, (0.5,) * 3)).logits
    assert max_logit_diff(expected, bcos, x) <= TOLERANCE


def test_in_memory_hf_model_with_explicit_normalisation():
    source = hf_vit(seed=1)
    bcos = BcosViTForImageClassification.from_pretrained_standard(
        source, b=1, bias="keep", image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    ).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(pixel_values=normalize(x, IMAGENET_MEAN, IMAGENET_STD)).logits
    assert max_logit_diff(expected, bcos, x) <= TOLERANCE


TIMM_VARIANTS = {
    "vit-s": dict(),
    "vit-ti": dict(name="vit_tiny_patch16_224", depth=3),
    "mean-pool-fc-norm": dict(global_pool="avg"),
    "no-class-token": dict(class_token=False, global_pool="avg"),
    "layer-scale-no-embed-class": dict(init_values=0.1, no_embed_class=True, name="deit3_small_patch16_224"),
    "pre-norm": dict(pre_norm=True),
    "fc-norm-on-the-class-token": dict(fc_norm=True),
    "quick-gelu": dict(name="vit_base_patch32_clip_224", act_layer="quick_gelu", pre_norm=True, depth=1),
    "timm-s-layer-norm-class": dict(norm_layer="layernorm"),
}


@pytest.mark.parametrize("variant", TIMM_VARIANTS, ids=list(TIMM_VARIANTS))
def test_timm_module_is_reproduced_exactly(variant):
    source = timm_vit(**TIMM_VARIANTS[variant])
    bcos = BcosViTForImageClassification.from_pretrained_standard(source, b=1, bias="keep").eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = source(normalize(x, source.pretrained_cfg["mean"], source.pretrained_cfg["std"]))
    assert max_logit_diff(expected, bcos, x) <= TOLERANCE


@pytest.mark.parametrize("variant", TIMM_VARIANTS, ids=list(TIMM_VARIANTS))
def test_a_timm_folder_converts_as_the_model_it_was_saved_from(variant, tmp_path):
    """Everything the folder's config.json says (eps of the CLIP-style ViTs, activation, pooling) is read."""
    from timm.models import save_for_hf

    source = timm_vit(**TIMM_VARIANTS[variant])
    save_for_hf(source, str(tmp_path), safe_serialization=True)
    from_memory = BcosViTForImageClassification.from_pretrained_standard(source, b=1, bias="keep").eval()
    from_folder = BcosViTForImageClassification.from_pretrained_standard(tmp_path, b=1, bias="keep").eval()
    assert from_folder.config.to_diff_dict() == from_memory.config.to_diff_dict()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(from_folder(pixel_values=x).logits, from_memory(pixel_values=x).logits)


def test_timm_hub_layout_folder_is_reproduced_exactly(tmp_path):
    """timm's Hub layout: config.json names the architecture (no dimensions) beside model.safetensors."""
    from timm.models import save_for_hf

    source = timm_vit(name="deit_small_patch16_224", global_pool="avg")
    save_for_hf(source, str(tmp_path), safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "deit_small_patch16_224" and "num_heads" not in json.dumps(config)
    bcos = BcosViTForImageClassification.from_pretrained_standard(tmp_path, b=1, bias="keep").eval()
    assert bcos.config.num_attention_heads == 6
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(normalize(x, source.pretrained_cfg["mean"], source.pretrained_cfg["std"]))
    assert max_logit_diff(expected, bcos, x) <= TOLERANCE


def test_bias_remove_drops_every_constant_and_sets_the_logit_bias():
    bcos = BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=5), b=2, bias="remove")
    names = [name for name, _ in bcos.named_parameters()]
    constant_biases = [n for n in names if n.endswith(".bias") and not n.endswith(("q_proj.bias", "k_proj.bias"))]
    assert constant_biases == []
    assert bcos.config.b == 2 and bcos.config.resolved_logit_bias == pytest.approx(-torch.log(torch.tensor(4.0)))


def test_bias_keep_with_b2_keeps_weights_of_the_source():
    source = hf_vit()
    bcos = BcosViTForImageClassification.from_pretrained_standard(source, b=2, bias="keep")
    assert torch.equal(bcos.classifier.weight, source.classifier.weight)
    assert torch.equal(bcos.classifier.bias, source.classifier.bias)


def test_unsupported_module_is_rejected_with_the_supported_list():
    with pytest.raises(ValueError, match="Supported sources"):
        BcosViTForImageClassification.from_pretrained_standard(torch.nn.Linear(3, 3))


def test_unsupported_checkpoint_type_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(ValueError, match="'resnet' model. Supported sources"):
        BcosViTForImageClassification.from_pretrained_standard(tmp_path)


def test_distilled_deit_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deit"}))
    with pytest.raises(ValueError, match="distillation token"):
        BcosViTForImageClassification.from_pretrained_standard(tmp_path)


def test_checkpoint_without_classifier_is_rejected(tmp_path):
    source = hf_vit()
    save_hf_source(source, tmp_path, (0.5,) * 3, (0.5,) * 3)
    weights = {k: v.contiguous() for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="do not fit.*classifier"):
        BcosViTForImageClassification.from_pretrained_standard(tmp_path)


def test_timm_features_without_counterpart_are_rejected():
    source = timm_vit(reg_tokens=2)
    with pytest.raises(ValueError, match="reg_token"):
        BcosViTForImageClassification.from_pretrained_standard(source)


@pytest.mark.parametrize(
    "options",
    [
        dict(final_norm=False),
        dict(global_pool="avg", fc_norm=False),
        dict(global_pool="avg", class_token=False, fc_norm=False),
    ],
    ids=["no final norm", "norm before average pooling", "gap without class token"],
)
def test_a_timm_vit_whose_head_reads_unnormalised_features_is_refused_by_name(options):
    with pytest.raises(ValueError, match="no LayerNorm on what its head reads"):
        BcosViTForImageClassification.from_pretrained_standard(timm_vit(**options))


def test_non_square_timm_vit_is_refused_not_misread_as_a_square_grid():
    # 96x64 px at patch 16 is 24 patches + the class token: 25 positions, which also fit a 5x5 grid
    with pytest.raises(ValueError, match="96x64 images; only square"):
        BcosViTForImageClassification.from_pretrained_standard(timm_vit(img_size=(96, 64)))


def test_non_square_timm_hub_folder_is_refused(tmp_path):
    from timm.models import save_for_hf

    save_for_hf(timm_vit(img_size=(96, 64)), str(tmp_path), safe_serialization=True)
    with pytest.raises(ValueError, match="96x64 images"):
        BcosViTForImageClassification.from_pretrained_standard(tmp_path)


def test_one_channel_timm_vit_is_reproduced_and_explained_exactly():
    source = timm_vit(in_chans=1, seed=2)
    bcos = BcosViTForImageClassification.from_pretrained_standard(
        source, b=1, bias="keep", image_mean=(0.3,), image_std=(0.2,)
    ).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = source(normalize(x, (0.3,), (0.2,)))
    assert max_logit_diff(expected, bcos, x) <= TOLERANCE
    explanation = bcos.explain(x)
    assert explanation.dynamic_weights.shape == (2, 2, 32, 32)
    total = explanation.contributions.sum(dim=(1, 2)) + explanation.bias
    torch.testing.assert_close(total, explanation.target_logits)
    rgb = explanation.render()[..., :3]
    assert torch.equal(rgb[..., 0], rgb[..., 1]) and torch.equal(rgb[..., 1], rgb[..., 2])  # grey


def test_a_processor_s_single_mean_and_std_stand_for_every_channel_as_in_transformers(tmp_path):
    """``ViTImageProcessor(image_mean=0.5, image_std=0.25)`` saves numbers, not lists, and normalises every channel
    with them; so does ``from_pretrained_standard(image_mean=0.5, image_std=0.25)``."""
    source = hf_vit(seed=2)
    source.save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=0.5, image_std=0.25).save_pretrained(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(pixel_values=(x - 0.5) / 0.25).logits
    from_folder = BcosViTForImageClassification.from_pretrained_standard(tmp_path, b=1, bias="keep").eval()
    given = BcosViTForImageClassification.from_pretrained_standard(
        source, b=1, bias="keep", image_mean=0.5, image_std=0.25
    ).eval()
    assert max_logit_diff(expected, from_folder, x) <= TOLERANCE and max_logit_diff(expected, given, x) <= TOLERANCE


def test_normalisation_of_another_channel_count_names_the_fix():
    with pytest.raises(ValueError, match=r"1-channel images.*image_mean= and image_std= with 1 value"):
        BcosViTForImageClassification.from_pretrained_standard(
            timm_vit(in_chans=1), image_mean=(0.5,) * 3, image_std=(0.2,) * 3
        )


@pytest.mark.parametrize(("image_size", "patch_size"), [(60, 14), (33, 8)])
def test_a_transformers_vit_that_leaves_pixels_unread_is_refused_naming_the_multiple(image_size, patch_size):
    source = hf_vit(image=image_size, patch=patch_size)
    fit = image_size // patch_size * patch_size
    with pytest.raises(ValueError, match=rf"image_size {image_size} is not a multiple of its patch_size.*\({fit}\)"):
        BcosViTForImageClassification.from_pretrained_standard(source)


def test_a_timm_architecture_timm_does_not_know_is_refused_by_name(tmp_path):
    source = timm_vit()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_wide_patch16_224", "num_classes": 6}))
    with pytest.raises(ValueError, match="timm cannot build the 'vit_wide_patch16_224'"):
        BcosViTForImageClassification.from_pretrained_standard(tmp_path)


def test_a_timm_folder_whose_config_does_not_describe_its_weights_is_refused(tmp_path):
    source = timm_vit()  # two blocks at 32 px; a config without model_args describes the full-size ViT-S
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224", "num_classes": 6}))
    with pytest.raises(ValueError, match=r"do not fit timm's 'vit_small_patch16_224'.*missing: \['blocks\.1"):
        BcosViTForImageClassification.from_pretrained_standard(tmp_path)


def test_missing_repo_fails_fast_offline():
    with pytest.raises(ValueError, match="neither a local folder nor a Hub repo"):
        BcosViTForImageClassification.from_pretrained_standard("nobody/no-such-vit")


def test_unknown_bias_mode_is_rejected():
    with pytest.raises(ValueError, match="'keep' or 'remove'"):
        BcosViTForImageClassification.from_pretrained_standard(hf_vit(), bias="zero")


def test_a_1000_class_timm_source_names_imagenet_classes_and_another_keeps_their_numbers():
    imagenet = BcosViTForImageClassification.from_pretrained_standard(timm_vit(num_classes=1000), b=1, bias="keep")
    assert imagenet.config.id2label[0] == "tench, Tinca tinca" and imagenet.config.id2label[1].startswith("goldfish")
    assert len(imagenet.config.id2label) == 1000 and imagenet.config.id2label[999].startswith("toilet tissue")
    other = BcosViTForImageClassification.from_pretrained_standard(timm_vit(num_classes=6), b=1, bias="keep")
    assert other.config.id2label == {i: f"LABEL_{i}" for i in range(6)}


def test_id2label_passed_to_the_conversion_names_the_source_s_classes():
    names = {i: name for i, name in enumerate("abcdef")}
    bcos = BcosViTForImageClassification.from_pretrained_standard(timm_vit(), b=1, bias="keep", id2label=names)
    assert bcos.config.id2label == names


def test_the_class_counts_of_timm_s_imagenet_heads_name_their_classes():
    from bcos_zoo.conversion.common import standard_labels

    assert standard_labels(1000)[0] == "tench, Tinca tinca"
    full = standard_labels(21843)  # Google's ImageNet-21k head (vit_*_in21k)
    assert len(full) == 21843 and not full[5].startswith("LABEL_") and len(set(full.values())) > 20_000
    assert standard_labels(10) == {i: f"LABEL_{i}" for i in range(10)}


def test_position_embeddings_interpolated_for_another_size_match_the_source_in_float64(tmp_path):
    """At another image size (interpolate_pos_encoding), a float64 conversion computes its source's logits to float64
    precision: the position embeddings are resampled in the model's own dtype, as transformers' ViT does."""
    source = hf_vit(image=32, patch=8).double()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    save_hf_source(source, tmp_path, mean, std)
    bcos = BcosViTForImageClassification.from_pretrained_standard(tmp_path, b=1, bias="keep").eval()
    x = torch.rand(2, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        expected = source(pixel_values=normalize(x, mean, std), interpolate_pos_encoding=True).logits
        logits = bcos(pixel_values=x, interpolate_pos_encoding=True).logits
    assert bcos.dtype == torch.float64 and (expected - logits).abs().max().item() <= 1e-12


def test_a_timm_vit_built_with_rmsnorm_is_refused_naming_the_module_and_its_class():
    """RMSNorm's weights fit the B-cos ViT's LayerNorm, which computes another function (it takes the mean out)."""
    with pytest.raises(ValueError, match=r"^The timm ViT's blocks\.0\.norm1 is a RmsNorm; only LayerNorm"):
        BcosViTForImageClassification.from_pretrained_standard(timm_vit(norm_layer="rmsnorm"))


def test_a_timm_vit_whose_average_takes_in_the_class_token_is_refused(tmp_path):
    """global_pool='avg' with pool_include_prefix=True averages the class token in; the B-cos ViT averages the patch
    tokens only. A timm folder records the option in its model_args, so it is refused there too."""
    from timm.models import save_for_hf

    source = timm_vit(global_pool="avg", pool_include_prefix=True)
    save_for_hf(source, str(tmp_path), safe_serialization=True)
    assert json.loads((tmp_path / "config.json").read_text())["model_args"]["pool_include_prefix"] is True
    for given in (source, tmp_path):
        with pytest.raises(ValueError, match=r"averages its class token in.*pool_include_prefix=True"):
            BcosViTForImageClassification.from_pretrained_standard(given)


def test_an_average_pool_without_a_class_token_to_take_in_is_reproduced_exactly():
    source = timm_vit(global_pool="avg", class_token=False, pool_include_prefix=True)
    bcos = BcosViTForImageClassification.from_pretrained_standard(source, b=1, bias="keep").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(normalize(x, source.pretrained_cfg["mean"], source.pretrained_cfg["std"]))
    assert max_logit_diff(expected, bcos, x) <= TOLERANCE


def test_a_timm_folder_s_label_names_name_the_classes(tmp_path):
    """timm's way to publish a fine-tuned model's classes: save_for_hf(..., model_config={"label_names": [...]})."""
    from timm.models import save_for_hf

    names = ["cat", "dog", "bird", "fish", "frog", "newt"]
    save_for_hf(timm_vit(), str(tmp_path), model_config={"label_names": names}, safe_serialization=True)
    bcos = BcosViTForImageClassification.from_pretrained_standard(tmp_path, b=1, bias="keep")
    assert bcos.config.id2label == dict(enumerate(names))


def test_timm_label_descriptions_show_the_label_names_they_describe():
    source = timm_vit(num_classes=2)
    source.pretrained_cfg = dict(
        source.pretrained_cfg, label_names=["n01", "n02"], label_descriptions={"n01": "tench", "n02": "goldfish"}
    )
    bcos = BcosViTForImageClassification.from_pretrained_standard(source, b=1, bias="keep")
    assert bcos.config.id2label == {0: "tench", 1: "goldfish"}


def test_timm_label_names_that_do_not_name_every_output_are_not_used():
    source = timm_vit(num_classes=3)
    source.pretrained_cfg = dict(source.pretrained_cfg, label_names=["cat", "dog"])
    bcos = BcosViTForImageClassification.from_pretrained_standard(source, b=1, bias="keep")
    assert bcos.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
