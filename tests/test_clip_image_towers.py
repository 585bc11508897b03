"""CLIP takes any registered B-cos image tower: a CNN backbone registered beside the ViT gives a working CLIP image
model, with exact prompt explanations, and an unregistered tower is refused by name."""

import pytest
import torch

from bcos_zoo import BcosCLIPConfig, BcosCLIPVisionModel, BcosResNetConfig, BcosResNetModel
from bcos_zoo.modeling import configuration_bcos_clip, modeling_bcos_clip


class ResNetTowerConfig(BcosResNetConfig):
    """A B-cos ResNet as a CLIP image tower: the backbone's fields plus the joint space's width."""

    model_type = "test_bcos_clip_resnet_tower"

    def __init__(self, projection_dim: int = 8, **kwargs):
        self.projection_dim = projection_dim
        super().__init__(**kwargs)

    @property
    def pooled_size(self) -> int:
        return self.hidden_sizes[-1]


@pytest.fixture
def resnet_tower(monkeypatch):
    monkeypatch.setitem(
        modeling_bcos_clip.IMAGE_TOWERS, ResNetTowerConfig.model_type, (BcosResNetModel, "modeling_bcos_resnet.py")
    )
    monkeypatch.setitem(configuration_bcos_clip.VISION_CONFIGS, ResNetTowerConfig.model_type, ResNetTowerConfig)
    return ResNetTowerConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], use_bias=False)


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_a_registered_cnn_tower_embeds_images_in_the_joint_space(resnet_tower):
    torch.manual_seed(0)
    model = BcosCLIPVisionModel(resnet_tower).double().eval()
    assert isinstance(model.vision_model, BcosResNetModel)
    with torch.no_grad():
        embeds = model(pixel_values=images()).image_embeds
        pooled = model.vision_model(pixel_values=images()).pooler_output.flatten(1)
    assert embeds.shape == (2, 8)
    torch.testing.assert_close(embeds, model.visual_projection(pooled))


def test_prompt_explanations_of_a_cnn_tower_are_complete(resnet_tower):
    torch.manual_seed(0)
    model = BcosCLIPVisionModel(resnet_tower).double().eval()
    text_embeds = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    explanation = model.explain(images(), text_embeds=text_embeds)
    cosine = explanation.target_logits
    assert cosine.abs().min() > 1e-6  # something to explain
    torch.testing.assert_close(explanation.bias, torch.zeros_like(cosine), atol=1e-10, rtol=0)  # no constants
    torch.testing.assert_close(explanation.contributions.sum(dim=(1, 2)), cosine, rtol=1e-9, atol=1e-12)


def test_a_clip_config_reloads_its_registered_tower(resnet_tower):
    config = BcosCLIPConfig(vision_config=resnet_tower.to_dict(), projection_dim=8)
    assert isinstance(config.vision_config, ResNetTowerConfig) and config.vision_config.hidden_sizes == [8, 16]


def test_an_unregistered_tower_is_refused_by_name():
    with pytest.raises(ValueError, match="No B-cos CLIP image tower 'bcos_unknown'; supported: "):
        BcosCLIPConfig(vision_config={"model_type": "bcos_unknown"})
