"""Model cards (and Space cards) rendered from the Jinja templates in ``hub_cards/`` with huggingface_hub.

The card's YAML header comes from ``ModelCardData``: ``EvalResult`` entries become the ``model-index`` the Hub shows
as an evaluation widget, and ``base_model`` links the card to its source checkpoint's page.
"""

import os
import re
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import EvalResult, ModelCard, ModelCardData, SpaceCard, SpaceCardData

from ..data.preprocessing import config_channels
from ..families import family_of
from ..training.task import describe_source, hub_id_or_none
from .recipes import Recipe, recipe_command


if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from ..data.datasets import DatasetSplits
    from ..training.task import CardFields
    from .bcos_releases import Port


TAGS = ["custom_code", "b-cos", "interpretability", "explainability", "vision"]
# model-index's dataset ``type`` (a required field) of data that is not a Hub dataset: the Hub reads the field as a
# dataset id and links it, so a folder's name would link to somebody else's dataset; this is the datasets library's
# name for a local image folder, the value cards of local data conventionally give
LOCAL_DATASET_TYPE = "imagefolder"


BUILT_IN_TEMPLATES = {True: "model_card.md", False: "standard_model_card.md"}  # by CardFields.bcos


def card_template(recipe: Recipe, fields: "CardFields") -> str:
    """The recipe's card template; a built-in one is the built-in card of what the task trains (a B-cos or a
    standard model), whichever the recipe names, so that a standard run never gets the B-cos card or the reverse."""
    name = recipe.card_template
    return BUILT_IN_TEMPLATES[fields.bcos] if name in BUILT_IN_TEMPLATES.values() else name


def template_path(name: str) -> Path:
    """A template in ``hub_cards/`` (installed with the package as ``bcos_zoo.hub_cards``)."""
    path = Path(str(files("bcos_zoo.hub_cards") / name))
    if not path.is_file():
        raise FileNotFoundError(f"card template {name!r} not found in {path.parent}; the templates are hub_cards/*.md")
    return path


def duration(seconds: float) -> str:
    """``12 seconds`` below a minute, else ``4.5 minutes``."""
    return f"{seconds:.0f} seconds" if seconds < 60 else f"{seconds / 60:.1f} minutes"


def evaluation_description(split: str, evaluated: int, available: int, held_out: float = 0.0) -> str:
    """The images the results were measured on, e.g. ``test split, 10,000 images``, a capped subset of them, or the
    images held out of a split (``held_out``: the seeded fraction)."""
    if held_out:
        images = f"images held out of the {split} split (a seeded {held_out:.0%})"
        if evaluated < available:
            return f"the first {evaluated:,} of the {available:,} {images}"
        return f"{evaluated:,} {images}"
    if evaluated < available:
        return f"the first {evaluated:,} of the {available:,} images of the {split} split"
    return f"{split} split, {evaluated:,} images"


def training_processes() -> int:
    """How many processes trained the model in this one: accelerate's count, which the ``Trainer`` set up (``accelerate
    launch --num_processes N`` makes it N); 1 where no ``Trainer`` ran."""
    from accelerate.state import AcceleratorState, is_initialized

    return AcceleratorState().num_processes if is_initialized() else 1


def code(text: str) -> str:
    """``text`` as a Markdown code span that shows it whole (a card's command may hold a backtick, in a ``--summary``
    say): fenced by one backtick more than its longest run of backticks, and, where it holds one or starts and ends
    with a space, padded with a space on each side, which Markdown strips."""
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    padded = "`" in text or text.startswith(" ") and text.endswith(" ") and text.strip()
    return f"{fence} {text} {fence}" if padded else f"{fence}{text}{fence}"


def cell(value: object) -> str:
    """``value`` as the text of a Markdown table cell: on one line, with ``|``, which would end the cell, escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def source_command(source: str) -> str | None:
    """The command that made a local source, as the card written beside it says (the :func:`code` span after
    "Reproduce with"): a card whose command starts from a local checkpoint must say how to make that checkpoint
    first."""
    card = Path(source).expanduser() / "README.md"
    if source == "scratch" or hub_id_or_none(source) or not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not (found := re.search(r"Reproduce with (`+)(.+?)(?<!`)\1(?!`)", text)):
        return None
    command = found.group(2)
    return command[1:-1] if command.startswith(" ") and command.endswith(" ") and command.strip() else command


def launch_command(command: str, processes: int) -> str:
    """``command`` (``python scripts/...``) as ``accelerate launch`` runs it on ``processes`` processes, when more than
    one: the batch size is per process, so one process would train with a smaller global batch."""
    if processes <= 1:
        return command
    # --multi_gpu: accelerate starts several processes on a machine without GPUs only when told to; a run sharded by
    # an accelerate config (FSDP, DeepSpeed) is launched with that config, which the flag would override
    sharded = any(os.environ.get(f"ACCELERATE_USE_{name}", "").lower() == "true" for name in ("FSDP", "DEEPSPEED"))
    launch = "accelerate launch --config_file '<its accelerate config>'" if sharded else "accelerate launch --multi_gpu"
    return f"{launch} --num_processes {processes} {command.removeprefix('python ')}"


def render_model_card(
    recipe: Recipe,
    fields: "CardFields",
    repo_id: str,
    metrics: dict[str, float],
    data: "DatasetSplits",
    evaluated: int,
    example_image: str = "",
    config: "PretrainedConfig | None" = None,
    continued: bool = False,
    processes: int | None = None,
) -> ModelCard:
    """The card of a trained model: metadata, usage, results, training, how to reproduce it, citations.

    ``fields`` are the task's (its headline metric, pipeline, objective, tags); ``metrics`` holds that metric and,
    when measured, ``source_<metric>`` for the standard source (else, where there is one, ``source_not_measured``
    says why), and the metrics of the task's ``measured`` lines. ``evaluated`` is how many of ``data``'s evaluation
    images were measured. ``config``, the trained model's, names the model family and gives B and the biases as the
    model has them (the recipe's apply only to B-cosification: a B-cos checkpoint, ``continued``, keeps its own, and
    a model from scratch takes its biases from its architecture). ``processes`` trained it data-parallel (by
    default, as many as trained in this process's run: :func:`training_processes`); the card states them with the
    global batch, and its command launches as many.
    """
    processes = training_processes() if processes is None else processes
    model_type = config.model_type if config is not None else "bcos_vit"
    settings = getattr(config, "vision_config", config)  # CLIP: the image tower is the B-cos part
    b = getattr(settings, "b", recipe.b)
    bias = ("keep" if settings.use_bias else "remove") if hasattr(settings, "use_bias") else recipe.bias
    known = family_of(model_type)
    family, family_tag = (known.card_name, known.name) if known else ("network", model_type)
    metric_key, metric_label = fields.metric_key, fields.metric_label
    source_name, base_model = describe_source(recipe.source)
    if base_model:  # a Hub checkpoint links to its page; a description stays words
        source_name = f"[`{base_model}`](https://huggingface.co/{base_model})"
    evaluation = evaluation_description(data.evaluation_split, evaluated, len(data.validation), data.held_out)
    eval_results = []
    if metric_key in metrics:
        eval_results.append(
            EvalResult(
                task_type=fields.pipeline_tag,
                dataset_type=data.name if hub_id_or_none(data.name) else LOCAL_DATASET_TYPE,
                dataset_name=data.name,
                dataset_split=data.evaluation_split,
                metric_type=fields.metric_type,
                metric_name=metric_label,
                metric_value=round(float(metrics[metric_key]), 4),
            )
        )
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=base_model,
        datasets=[data.name] if hub_id_or_none(data.name) else None,
        library_name="transformers",
        pipeline_tag=fields.pipeline_tag,
        license=recipe.license,
        tags=([] if not fields.bcos else TAGS) + [family_tag, *fields.tags],
        metrics=[fields.metric_type] if eval_results else None,
        eval_results=eval_results or None,
    )
    results = [
        {"name": name, "value": f"{100 * metrics[key]:.2f}%"}
        for name, key in (
            (f"`{repo_id}` (this model)", metric_key),
            (f"{source_name} (standard source)", f"source_{metric_key}"),
        )
        if key in metrics and not (key.startswith("source_") and not fields.bcos)
    ]
    hyperparameters = {
        **({"B": b, "biases": bias} if fields.bcos else {}),
        "objective": fields.objective,
        "optimiser": "Adam (decoupled weight decay)",
        "learning rate": recipe.learning_rate,
        "schedule": f"cosine, linear warm-up over {100 * recipe.warmup_ratio:g}% of steps",
        "processes (data-parallel)": processes,
        "batch size (per process)": recipe.batch_size,
        "gradient accumulation steps": recipe.gradient_accumulation_steps,
        "global batch size": processes * recipe.batch_size * recipe.gradient_accumulation_steps,
        "epochs" if recipe.max_steps <= 0 else "steps": recipe.epochs if recipe.max_steps <= 0 else recipe.max_steps,
        "weight decay": recipe.weight_decay,
        "gradient clipping": f"adaptive, {recipe.agc_clip}" if recipe.agc_clip else "global norm 1.0",
        "seed": recipe.seed,
        "precision": {"fp32": "float32", "bf16": "bfloat16 mixed precision"}.get(recipe.precision, recipe.precision),
        **dict(fields.hyperparameters),
    }
    training_summary = f"Trained with the Hugging Face `Trainer` from the `{recipe.name}` recipe. " + (
        f"Training took {duration(metrics['train_seconds'])} in all." if metrics.get("train_seconds") else ""
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path(card_template(recipe, fields))),
        model_title=repo_id.split("/")[-1],
        summary=recipe.summary,
        pipeline_tag=fields.pipeline_tag,
        family=family,
        from_scratch=recipe.source == "scratch",
        continued=continued,
        source=source_name,
        b=b,
        bias=bias,
        dataset_name=data.name,
        repo_id=repo_id,
        example_image=example_image,
        metric_label=metric_label,
        evaluation=evaluation,
        results=results,
        channels=config_channels(config),
        measured=[
            text.format(value=metrics[key], dataset=data.name, evaluation=evaluation)
            for key, text in fields.measured
            if key in metrics
        ],
        citation=fields.citation,
        source_not_measured=metrics.get("source_not_measured") if fields.bcos else None,
        training_summary=training_summary,
        hyperparameters=hyperparameters,
        command=launch_command(recipe_command(recipe), processes),
        source_command=source_command(recipe.source),
        teacher_command=source_command(recipe.teacher) if recipe.teacher else None,
        code=code,
        cell=cell,
    )


def image_classifier_models() -> list[str]:
    """The Hub repos of the zoo's B-cos image classifiers (ViTs and CNNs), in catalogue order: the recipes whose task
    publishes a B-cos model for image classification (not the CLIP image towers, not the standard sources)."""
    from ..training import get_task
    from .recipes import RECIPES

    cards = {name: get_task(recipe).card for name, recipe in RECIPES.items()}
    return [
        recipe.hub_model_id
        for name, recipe in RECIPES.items()
        if cards[name] is not None and cards[name].bcos and cards[name].pipeline_tag == "image-classification"
    ]


def clip_models() -> list[str]:
    """The Hub repos of the zoo's B-cos CLIP models (zero-shot image classification, ViT and ResNet image towers),
    in catalogue order."""
    from ..training import get_task
    from .recipes import RECIPES

    cards = {name: get_task(recipe).card for name, recipe in RECIPES.items()}
    return [
        recipe.hub_model_id
        for name, recipe in RECIPES.items()
        if cards[name] is not None and cards[name].bcos and cards[name].pipeline_tag == "zero-shot-image-classification"
    ]


# The Spaces in spaces/: their Hub header fields; each shows the model of a zoo recipe by default, and ``models``
# (when given) selects the further zoo models it offers.
SPACES = {
    "bcos-vit-explainer": dict(
        title="B-cos Classifier Explainer",
        emoji="🔍",
        colorFrom="indigo",
        colorTo="red",
        recipe="bcos-vit-s",
        models=image_classifier_models,
        short_description="Exact explanations of B-cos ViT and CNN predictions",
    ),
    "bcos-clip-explainer": dict(
        title="B-cos CLIP Explainer",
        emoji="🔎",
        colorFrom="indigo",
        colorTo="green",
        recipe="bcos-clip-vit-b32",
        models=clip_models,
        short_description="Which pixels make an image match a text prompt",
    ),
}


def render_space_card(name: str, body: str, sdk_version: str | None = None) -> SpaceCard:
    """The README of ``spaces/<name>``: the YAML header the Hub reads (sdk, app file, model) above ``body``.

    The header comes from :data:`SPACES` and the recipe catalogue, so the Space always names the zoo's models: the
    default recipe's first, then those its ``models`` selection offers.
    """
    from .recipes import get_recipe

    if sdk_version is None:
        import gradio

        sdk_version = gradio.__version__
    fields = dict(SPACES[name])
    default = get_recipe(fields.pop("recipe")).hub_model_id
    models = list(dict.fromkeys([default, *fields.pop("models", list)()]))
    data = SpaceCardData(
        title=fields.pop("title"),
        sdk="gradio",
        sdk_version=sdk_version,
        app_file="app.py",
        python_version="3.11",
        models=models,
        license="apache-2.0",
        **fields,
    )
    return SpaceCard.from_template(data, template_path=str(template_path("space_card.md")), body=body.strip())


def space_card_body(readme: str) -> str:
    """The text of a Space README below its YAML header."""
    return readme.split("\n---\n", 1)[1] if readme.startswith("---\n") else readme


# The config fields a ported release's card lists, where its family's config has them.
RELEASE_ARCHITECTURE_FIELDS = (
    "layer_type",
    "depths",
    "hidden_sizes",
    "bottleneck_widths",
    "groups",
    "num_init_features",
    "growth_rate",
    "block_config",
    "head_size",
    "conv_stem",
    "patch_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "norm_type",
    "hidden_act",
    "b",
    "normalize_weights",
    "use_bias",
    "logit_bias",
)


def render_release_card(port: "Port", model: "PreTrainedModel", command: str = "") -> ModelCard:
    """The card of a model released with the ``bcos`` package and ported here (``bcos_releases.port_release``):
    the architecture, the authors' reported ImageNet numbers (as a model-index credited to them, not verified), the
    release file, the measured conversion error, the ImageNet terms and the citation."""
    from .bcos_releases import RELEASE_TAG, REPOSITORY

    release, family = port.release, family_of(model)
    reported = [
        EvalResult(
            task_type="image-classification",
            dataset_type="ILSVRC/imagenet-1k",
            dataset_name="ImageNet-1k",
            dataset_split="validation",
            metric_type=metric,
            metric_name=f"{name} (reported by the authors)",
            metric_value=round(value / 100, 5),
            source_name="bcos package (B-cos v2)",
            source_url=REPOSITORY,
        )
        for metric, name, value in (
            ("accuracy", "Top-1 accuracy", release.top1),
            ("top_5_accuracy", "Top-5 accuracy", release.top5),
        )
        if value is not None
    ]
    card_data = ModelCardData(
        model_name=port.repo_id.split("/")[-1],
        datasets=["ILSVRC/imagenet-1k"],
        library_name="transformers",
        pipeline_tag="image-classification",
        license="other",
        license_name="imagenet-terms-of-access",
        license_link="https://image-net.org/download",
        tags=[*TAGS, family.name, RELEASE_TAG],
        metrics=["accuracy"],
        eval_results=reported or None,
    )
    config = model.config
    architecture = {
        name: getattr(config, name) for name in RELEASE_ARCHITECTURE_FIELDS if getattr(config, name, None) is not None
    }
    if "logit_bias" in architecture:
        architecture["logit_bias"] = f"{config.resolved_logit_bias:.6g}"
    measured = f"{port.parameters / 1e6:.2f}M"
    prefix = release.sha256_prefix
    sha256_note = (
        f"are the released ones: the file's SHA-256 starts with `{prefix}`, as the release file's name says."
        if port.sha256_matches
        else f"are not those of the release file: its SHA-256 starts with `{prefix}`, this file's does not."
    )
    unknown = "not stated"
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path("bcos_release_card.md")),
        model_title=port.repo_id.split("/")[-1],
        title=release.title,
        entry=release.entry,
        file_name=release.file_name,
        repo_id=port.repo_id,
        resize=release.resize,
        crop=release.crop,
        interpolation=release.interpolation,
        family=family.card_name,
        model_class=type(model).__name__,
        parameters=measured,
        params_note=f" (the authors report {release.params})" if release.params and release.params != measured else "",
        architecture=architecture,
        top1=f"{release.top1:.3f}%" if release.top1 is not None else unknown,
        top5=f"{release.top5:.3f}%" if release.top5 is not None else unknown,
        reported_params=release.params or unknown,
        command=command or f"python scripts/port_bcos.py --entry {release.entry} --weights {release.file_name}",
        sha256_note=sha256_note,
        error=port.error,
    )
