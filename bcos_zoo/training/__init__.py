"""Training through the HF ``Trainer``: the shared parts (``trainer``) and one module per training task.

A recipe names its task; :data:`TASKS` maps the name to the :class:`~bcos_zoo.training.task.Task` that builds, trains,
evaluates and publishes it. Adding a task is a new module and its entry here (docs/architecture.md).
"""

from .classification import BcosClassification
from .clip_distillation import CLIPDistillation
from .explanation_distillation import ExplanationDistillation
from .guided_classification import GuidedClassification
from .standard_classification import StandardClassification
from .task import Task


TASKS: dict[str, type[Task]] = {
    BcosClassification.name: BcosClassification,
    CLIPDistillation.name: CLIPDistillation,
    GuidedClassification.name: GuidedClassification,
    ExplanationDistillation.name: ExplanationDistillation,
    StandardClassification.name: StandardClassification,
}


def get_task(recipe) -> Task:
    """The task a recipe names, ready for one run, with the list of tasks in the error."""
    try:
        return TASKS[recipe.task](recipe)
    except KeyError:
        raise ValueError(f"unknown task {recipe.task!r}; the tasks are: {', '.join(TASKS)}") from None
