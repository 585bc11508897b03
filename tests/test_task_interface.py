"""A task plug-in is held to its interface when the run is set up, not after training: what it must define, what it
may leave out (a card, Hub data), and what the run takes from it as it is (its card's metric, labels that are not one
class number)."""

from dataclasses import replace

import pytest
import torch
from PIL import Image
from tiny_models import TINY_CLASSIFIERS
from training_testing import make_image_folder

from bcos_zoo.data.datasets import DatasetSplits
from bcos_zoo.training import TASKS
from bcos_zoo.training.classification import BcosClassification
from bcos_zoo.training.task import Task
from bcos_zoo.zoo.cards import render_model_card
from bcos_zoo.zoo.finetune import check_before_training
from bcos_zoo.zoo.recipes import get_recipe


def recipe_of(task: type[Task], monkeypatch, **fields):
    monkeypatch.setitem(TASKS, task.name, task)
    return replace(get_recipe("bcos-vit-fashion-mnist"), task=task.name, source="scratch", **fields)


class NoEvaluation(Task):
    name = "no-evaluation"

    def build_model(self, class_names):
        return TINY_CLASSIFIERS["vit"]()


class NoCard(BcosClassification):
    name = "no-card"
    card = None


class OwnData(BcosClassification):
    name = "own-data"

    def data_needs_hub(self) -> bool:
        return False


def test_a_task_without_evaluate_is_refused_when_the_run_is_set_up(monkeypatch):
    recipe = recipe_of(NoEvaluation, monkeypatch)
    with pytest.raises(TypeError, match="NoEvaluation with abstract method evaluate"):
        check_before_training(recipe, push=False, dry_run=False)


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_push_of_a_task_without_a_card_is_refused_before_training(monkeypatch, tmp_path, dry_run):
    recipe = recipe_of(NoCard, monkeypatch, dataset=str(make_image_folder(tmp_path / "data", per_class=1)))
    with pytest.raises(ValueError, match="the no-card task writes no model card.*train without --push"):
        check_before_training(recipe, push=True, dry_run=dry_run)
    check_before_training(recipe, push=False, dry_run=False)  # training without a card is fine


def test_a_task_that_makes_its_own_data_is_not_sent_to_the_hub_for_it(monkeypatch):
    with pytest.raises(ValueError, match="Cannot use the Hub .* the dataset 'synthetic-colours' needs it"):
        check_before_training(recipe_of(BcosClassification, monkeypatch, dataset="synthetic-colours"), False, False)
    check_before_training(recipe_of(OwnData, monkeypatch, dataset="synthetic-colours"), push=False, dry_run=False)


def test_the_card_metadata_names_the_task_s_own_metric():
    fields = replace(TASKS["classification"].card, metric_key="map", metric_label="mAP", metric_type="mean_ap")
    data = DatasetSplits([], [None] * 10, ["a", "b"], "org/data", "test")
    card = render_model_card(get_recipe("bcos-vit-fashion-mnist"), fields, "org/m", {"map": 0.25}, data, 10)
    assert card.data.metrics == ["mean_ap"]
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_name, result.metric_value) == ("mean_ap", "mAP", 0.25)


@pytest.mark.parametrize(
    "labels, titled", [(torch.tensor([1.0, 0.0, 1.0]), False), (torch.tensor(2), True), (-1, False)]
)
def test_example_panels_name_a_true_class_only_for_a_class_number(tmp_path, labels, titled):
    model = TINY_CLASSIFIERS["vit"]().eval()
    items = [{"pixel_values": torch.rand(3, 32, 32), "labels": labels} for _ in range(2)]
    data = DatasetSplits([], items, ["a", "b", "c"], "org/data", "test")
    task = BcosClassification(get_recipe("bcos-vit-fashion-mnist"))
    names = task.write_examples(model, data, items, tmp_path)
    assert len(names) == 2
    with Image.open(tmp_path / names[0]) as panel:
        assert ("true: c" in panel.info["Title"]) is titled
