"""Model cards (and Space cards) rendered from the Jinja templates in ``hub_cards/`` with huggingface_hub.

The card's YAML header comes from ``ModelCardData``: ``EvalResult`` entries become the ``model-index`` the Hub shows
as an evaluation widget, and ``base_model`` links the card to its source checkpoint's page.
"""

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import EvalResult, ModelCard, ModelCardData, SpaceCard, SpaceCardData

from .recipes import Recipe


if TYPE_CHECKING:
    from ..training.task import CardFields


TAGS = ["custom_code", "b-cos", "interpretability", "explainability", "vision"]


def template_path(name: str) -> Path:
    """A template in ``hub_cards/`` (installed with the package as ``bcos_zoo.hub_cards``)."""
    path = Path(str(files("bcos_zoo.hub_cards") / name))
    if not path.is_file():
        raise FileNotFoundError(f"card template {name!r} not found in {path.parent}; the templates are hub_cards/*.md")
    return path


def hub_id_or_none(source: str) -> str | None:
    """``source`` when it names a Hub repo (``org/name`` that is not a local path), else None."""
    looks_like_id = source.count("/") == 1 and not source.startswith((".", "/", "~"))
    return source if looks_like_id and not Path(source).exists() else None


def render_model_card(
    recipe: Recipe,
    fields: "CardFields",
    repo_id: str,
    metrics: dict[str, float],
    dataset_id: str,
    dataset_name: str,
    example_image: str,
    base_model: str | None = None,
) -> ModelCard:
    """The card of a fine-tuned model: metadata, usage with ``trust_remote_code``, results, training, citations.

    ``fields`` are the task's (its headline metric, pipeline, objective, tags); ``metrics`` holds that metric and,
    when measured, ``source_<metric>`` for the standard source, and optionally ``embedding_cosine``.
    """
    metric_key, metric_label = fields.metric_key, fields.metric_label
    base_model = base_model or hub_id_or_none(recipe.source)
    eval_results = []
    if metric_key in metrics:
        eval_results.append(
            EvalResult(
                task_type=fields.pipeline_tag,
                dataset_type=dataset_id,
                dataset_name=dataset_name,
                dataset_split="validation",
                metric_type="accuracy",
                metric_name=metric_label,
                metric_value=round(float(metrics[metric_key]), 4),
            )
        )
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=base_model,
        datasets=[dataset_id] if hub_id_or_none(dataset_id) else None,
        library_name="transformers",
        pipeline_tag=fields.pipeline_tag,
        license=recipe.license,
        tags=TAGS + list(fields.tags),
        metrics=["accuracy"],
        eval_results=eval_results or None,
    )
    results = [
        {"name": name, "value": f"{100 * metrics[key]:.2f}%"}
        for name, key in (
            (f"`{repo_id}` (this model)", metric_key),
            (f"`{base_model or Path(recipe.source).name}` (standard source)", f"source_{metric_key}"),
        )
        if key in metrics
    ]
    if "embedding_cosine" in metrics:
        cosine = f"{metrics['embedding_cosine']:.4f}"
        results.append({"name": "Mean cosine to the original embeddings", "value": cosine})
    hyperparameters = {
        "B": recipe.b,
        "biases": recipe.bias,
        "objective": fields.objective,
        "optimiser": "Adam (decoupled weight decay)",
        "learning rate": recipe.learning_rate,
        "schedule": f"cosine, linear warm-up over {recipe.warmup_ratio:.0%} of steps",
        "batch size (per device)": recipe.batch_size,
        "epochs" if recipe.max_steps <= 0 else "steps": recipe.epochs if recipe.max_steps <= 0 else recipe.max_steps,
        "weight decay": recipe.weight_decay,
        "gradient clipping": f"adaptive, {recipe.agc_clip}" if recipe.agc_clip else "global norm 1.0",
        "seed": recipe.seed,
        **dict(fields.hyperparameters),
    }
    training_summary = f"Fine-tuned with the Hugging Face `Trainer` from the `{recipe.name}` recipe. " + (
        f"Training took {metrics['train_seconds'] / 60:.1f} minutes. " if "train_seconds" in metrics else ""
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path(recipe.card_template)),
        model_title=repo_id.split("/")[-1],
        summary=recipe.summary,
        pipeline_tag=fields.pipeline_tag,
        source=base_model or "/".join(Path(recipe.source).parts[-2:]),  # no local absolute paths in a public card
        b=recipe.b,
        bias=recipe.bias,
        dataset_name=dataset_name,
        repo_id=repo_id,
        example_image=example_image,
        metric_label=metric_label,
        eval_split="validation",
        results=results,
        training_summary=training_summary,
        hyperparameters=hyperparameters,
        recipe_name=recipe.name,
    )


# The Spaces in spaces/: their Hub header fields; each shows the model of a zoo recipe by default.
SPACES = {
    "bcos-vit-explainer": dict(
        title="B-cos ViT Explainer",
        emoji="🔍",
        colorFrom="indigo",
        colorTo="red",
        recipe="bcos-vit-s",
        short_description="Exact explanations of a B-cos ViT's predictions",
    ),
    "bcos-clip-explainer": dict(
        title="B-cos CLIP Explainer",
        emoji="🔎",
        colorFrom="indigo",
        colorTo="green",
        recipe="bcos-clip-vit-b32",
        short_description="Which pixels make an image match a text prompt",
    ),
}


def render_space_card(name: str, body: str, sdk_version: str | None = None) -> SpaceCard:
    """The README of ``spaces/<name>``: the YAML header the Hub reads (sdk, app file, model) above ``body``.

    The header comes from :data:`SPACES` and the recipe catalogue, so the Space always names the zoo's model.
    """
    from .recipes import get_recipe

    if sdk_version is None:
        import gradio

        sdk_version = gradio.__version__
    fields = dict(SPACES[name])
    model = get_recipe(fields.pop("recipe")).hub_model_id
    data = SpaceCardData(
        title=fields.pop("title"),
        sdk="gradio",
        sdk_version=sdk_version,
        app_file="app.py",
        python_version="3.11",
        models=[model],
        license="apache-2.0",
        **fields,
    )
    return SpaceCard.from_template(data, template_path=str(template_path("space_card.md")), body=body.strip())


def space_card_body(readme: str) -> str:
    """The text of a Space README below its YAML header."""
    return readme.split("\n---\n", 1)[1] if readme.startswith("---\n") else readme
