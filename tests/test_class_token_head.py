"""A head that reads the class token alone has the last block computed for that token alone, with the same result.

The classifier's logits, explanations and gradients, and the CLIP tower's explanations, are compared with the
whole last block (forced by asking for hidden states, or by a hook); the work saved is counted in FLOPs.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bcos_zoo import BcosCLIPVisionConfig, BcosCLIPVisionModel, BcosViTConfig, BcosViTForImageClassification


# the transformer both the ViT classifier and the CLIP image tower are built on here: 16 patches and a class token
TOWER = dict(
    image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=3, num_attention_heads=3, intermediate_size=48
)


def classifier(**overrides) -> BcosViTForImageClassification:
    torch.manual_seed(0)
    return BcosViTForImageClassification(BcosViTConfig(**{**TOWER, "num_labels": 5, **overrides})).double().eval()


def images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("use_bias", [False, True])
def test_logits_equal_those_of_the_whole_last_block(use_bias):
    model, x = classifier(use_bias=use_bias), images()
    with torch.no_grad():
        whole = model(x, output_hidden_states=True)
        class_token = model(x)
    assert class_token.hidden_states is None and class_token.attentions is None
    torch.testing.assert_close(class_token.logits, whole.logits, rtol=1e-12, atol=1e-12)


def test_the_last_block_computes_less_than_a_whole_block():
    model, x = classifier(), images()
    whole, class_token = flops(lambda: model(x, output_hidden_states=True)), flops(lambda: model(x))
    # skipped for 3 x 16 patch tokens: the query and output projections (d x d) and both MLP units (d x 2d)
    d = 24
    assert whole - class_token >= 3 * 16 * 2 * (2 * d * d + 2 * d * 2 * d)


def test_positions_interpolated_for_another_size_give_the_same_logits():
    model, x = classifier(), images(2, size=48)
    with torch.no_grad():
        whole = model(x, interpolate_pos_encoding=True, output_attentions=True).logits
        class_token = model(x, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(class_token, whole, rtol=1e-12, atol=1e-12)


def test_training_gradients_equal_those_of_the_whole_last_block():
    model, x, labels = classifier().train(), images(), torch.tensor([0, 4, 2])
    model(x, labels=labels).loss.backward()
    class_token = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model(x, labels=labels, output_hidden_states=True).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(class_token[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_a_hook_on_the_last_block_sees_every_token():
    model, x = classifier(), images()
    seen = []
    handle = model.bcos_vit.layers[-1].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        logits = model(x).logits
    handle.remove()
    assert seen == [(3, 17, 48)]
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, logits, rtol=1e-12, atol=1e-12)


def test_a_hook_on_every_module_sees_every_token_of_the_last_block():
    model, x = classifier(), images()
    last_fc1, seen = model.bcos_vit.layers[-1].mlp.fc1, []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(o.shape) if m is last_fc1 else None
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert seen == [(3, 17, 48)]


def test_a_hook_on_the_backbone_is_called():
    model, x = classifier(), images()
    calls = []
    handle = model.bcos_vit.register_forward_hook(lambda m, i, o: calls.append(o.last_hidden_state.shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert calls == [(3, 17, 24)]


def test_asking_for_hidden_states_once_does_not_stop_the_saving():
    model, x = classifier(), images()
    before = flops(lambda: model(x))
    with torch.no_grad():
        model(x, output_hidden_states=True, output_attentions=True)  # installs transformers' recorder hooks
    assert flops(lambda: model(x)) == before


def test_a_config_asking_for_hidden_states_gets_them_whole():
    model, x = classifier(), images()
    model.config.output_hidden_states = True
    with torch.no_grad():
        out = model(x)
    assert [h.shape for h in out.hidden_states] == [(3, 17, 24)] * 4


def test_mean_pooling_runs_the_whole_last_block():
    model, x = classifier(use_class_token=False, pooling="mean"), images()
    assert flops(lambda: model(x)) == flops(lambda: model(x, output_hidden_states=True))


def test_explanations_equal_those_of_the_whole_last_block():
    model, x = classifier(), images()
    class_token = model.explain(x)
    handle = model.bcos_vit.layers[-1].register_forward_hook(lambda m, i, o: None)  # forces the whole block
    whole = model.explain(x)
    handle.remove()
    torch.testing.assert_close(class_token.contributions, whole.contributions, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(class_token.logits, whole.logits, rtol=1e-12, atol=1e-12)


def test_clip_tower_explanations_equal_those_of_the_whole_last_block():
    torch.manual_seed(0)
    model, x = BcosCLIPVisionModel(BcosCLIPVisionConfig(**TOWER, projection_dim=8)).double().eval(), images(2)
    text_embeds = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    class_token = model.explain(x, text_embeds=text_embeds)
    handle = model.vision_model.register_forward_pre_hook(lambda m, i: None)
    whole = model.explain(x, text_embeds=text_embeds)
    handle.remove()
    torch.testing.assert_close(class_token.contributions, whole.contributions, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        assert model(x).last_hidden_state.shape == (2, 17, 24), "the tower's own output keeps every token"


def test_a_hook_on_an_earlier_block_leaves_the_saving():
    model, x = classifier(), images()
    before = flops(lambda: model(x))
    handle = model.bcos_vit.layers[0].register_forward_hook(lambda m, i, o: None)
    assert flops(lambda: model(x)) == before
    handle.remove()


def test_the_classifier_goes_through_the_backbone_forward():
    # wrappers of a module's forward (accelerate's device and offload hooks) must see the call
    model, x = classifier(), images()
    calls = []
    forward = model.bcos_vit.forward

    def wrapped(*args, **kwargs):
        calls.append(kwargs.get("class_token_only"))
        return forward(*args, **kwargs)

    model.bcos_vit.forward = wrapped
    with torch.no_grad():
        model(x)
    assert calls == [True]
