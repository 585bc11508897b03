"""Losses on explanations: the energy loss of model guidance and the explanation term of e2KD, as plain functions.

Both need explanations that can be differentiated: in explanation mode a B-cos model is the dynamic linear map
``y = W(x) e + c`` of its encoded input ``e = [x, 1 - x]``, and ``W(x)`` is a gradient. Taking that gradient with
``create_graph=True`` keeps it a function of the weights, so a loss on ``W(x)`` (or on the contributions
``e * W(x)``) trains the model. The dynamic factors stay detached, as in every explanation: the loss shapes the
linear map, not the factors that select it.

At a hidden layer ``l`` the same holds for the layer's output ``a_l``: ``y = W_l(x) a_l + c_l``, and the per-position
contributions ``a_l * dy/da_l`` (summed over channels) are upsampled bilinearly to the image, as the model guidance
paper does for its intermediate-layer explanations.
"""

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.bcos_layers import explanation_mode
from ..modeling.explanation import BcosExplanation, compute_explanation, resolve_target


INPUT_LAYER = "input"


def differentiable_explanation(
    model: nn.Module, pixel_values: torch.Tensor, target: int | torch.Tensor | None = None
) -> BcosExplanation:
    """``model.explain(pixel_values, target, create_graph=True)``: an explanation a loss can be differentiated through.

    A model whose ``explain`` does not take ``create_graph`` is explained with the same public pieces
    (:func:`~bcos_zoo.modeling.explanation.compute_explanation` on its logits of the encoded image).
    """
    if "create_graph" in inspect.signature(model.explain).parameters:
        return model.explain(pixel_values, target, create_graph=True)

    def score(encoded: torch.Tensor) -> torch.Tensor:
        logits = model._logits(encoded)
        return logits[0] if isinstance(logits, tuple) else logits

    return compute_explanation(model, score, pixel_values, target, create_graph=True)


def _layer_output(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot read a tensor from a layer output of type {type(output).__name__}")


def spatial_contributions(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """(N, h, w) per-position contributions ``sum_channels a * dy/da`` of a hidden layer.

    Convolutional maps (N, C, h, w) are summed over channels; token sequences (N, T, D) over features, after
    dropping the leading tokens that are not patches (a class token), and laid out on their square patch grid.
    """
    contributions = activation * gradient
    if contributions.ndim == 4:
        return contributions.sum(dim=1)
    if contributions.ndim == 3:
        tokens = contributions.sum(dim=2)
        side = math.isqrt(tokens.shape[1])
        if side == 0:
            raise ValueError(f"a layer output of {tokens.shape[1]} tokens has no patch grid")
        return tokens[:, tokens.shape[1] - side * side :].reshape(-1, side, side)
    raise ValueError(f"a hidden layer's output must be (N, C, h, w) or (N, T, D), got {tuple(activation.shape)}")


def hidden_layer_contributions(
    model: nn.Module, pixel_values: torch.Tensor, target: torch.Tensor, layer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable contributions of the module ``layer`` (a name from ``model.named_modules()``) to each image's
    ``target`` logit, upsampled bilinearly to the image size: ``((N, H, W) contributions, (N, C) logits)``."""
    modules = dict(model.named_modules())
    if layer not in modules:
        hidden = [name for name in modules if name.count(".") <= 3 and name]
        raise ValueError(f"the model has no layer {layer!r}; its layers include: {', '.join(hidden[:40])}")
    captured = []

    def keep(module, inputs, output):
        captured.append(_layer_output(output))

    handle = modules[layer].register_forward_hook(keep)
    try:
        with torch.enable_grad(), explanation_mode(model):
            logits = model(pixel_values=pixel_values).logits
            if len(captured) != 1:
                raise ValueError(f"layer {layer!r} ran {len(captured)} times in one forward pass; choose another")
            activation = captured[0]
            target = resolve_target(target, logits.detach())
            selected = logits.gather(1, target[:, None]).sum()
            (gradient,) = torch.autograd.grad(selected, activation, create_graph=True)
    finally:
        handle.remove()
    maps = spatial_contributions(activation, gradient)
    upsampled = F.interpolate(maps[:, None], size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    return upsampled[:, 0], logits


def guidance_contributions(
    model: nn.Module, pixel_values: torch.Tensor, target: torch.Tensor, layer: str = INPUT_LAYER
) -> torch.Tensor:
    """(N, H, W) differentiable contributions to the ``target`` logits, at the input or at a hidden ``layer``."""
    if layer == INPUT_LAYER:
        return differentiable_explanation(model, pixel_values, target).contributions
    return hidden_layer_contributions(model, pixel_values, target, layer)[0]


def energy_loss(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) the energy loss of model guidance (Rao et al., 2023), one value per image:

        L_loc = 1 - sum_{p in M} A+_p / sum_p A+_p,      A+ = max(A, 0),

    with ``A`` (N, H, W) the attribution of the explained class and ``M`` (N, H, W) the union of that class's boxes.
    An image without any positive attribution has nothing inside the boxes and scores 1. The loss is 0 when all
    positive attribution lies in the boxes, whatever the negative attribution does.
    """
    if attributions.shape != masks.shape:
        raise ValueError(f"attributions {tuple(attributions.shape)} and masks {tuple(masks.shape)} differ in shape")
    positive = attributions.clamp_min(0)
    total = positive.sum(dim=(1, 2))
    inside = (positive * masks.to(positive.dtype)).sum(dim=(1, 2))
    share = torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))
    return 1 - share


def explanation_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(N,) cosine similarity of two batches of explanations, each image's explanation flattened to one vector.

    A student explanation of another resolution than the teacher's is resized (bilinearly) to the teacher's first.
    """
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    return F.cosine_similarity(student.flatten(1), teacher.flatten(1).to(student.dtype), dim=1)


def e2kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_explanation: torch.Tensor | None,
    teacher_explanation: torch.Tensor | None,
    temperature: float = 1.0,
    kd_weight: float = 1.0,
    explanation_weight: float = 1.0,
    labels: torch.Tensor | None = None,
    label_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Explanation-enhanced knowledge distillation (Parchami-Araghi et al., 2024), averaged over the batch:

        L = lambda_gt CE(z_s, y) + lambda_kd T^2 KL(softmax(z_t / T) || softmax(z_s / T))
            + lambda_exp (1 - cos(vec E_s, vec E_t)),

    both explanations ``E`` taken for the teacher's top-1 class; for B-cos models ``E`` is the dynamic weight
    ``W(x)`` (N, 6, H, W) over the ``[x, 1 - x]`` encoding. Returns the total (``loss``) and each term. The teacher's
    logits and explanation are constants (detached). A student identical to its teacher has loss 0. Without
    explanations (``None``) this is plain knowledge distillation.
    """
    teacher_logits = teacher_logits.detach()
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.to(student_logits.dtype) / temperature, dim=1)
    kd = temperature**2 * F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    loss, terms = kd_weight * kd, {"kd": kd}
    if student_explanation is not None and teacher_explanation is not None:
        explanation = (1 - explanation_cosine(student_explanation, teacher_explanation.detach())).mean()
        loss = loss + explanation_weight * explanation
        terms["explanation"] = explanation
    if label_weight:
        if labels is None:
            raise ValueError("label_weight > 0 needs the labels")
        terms["label"] = F.cross_entropy(student_logits, labels)
        loss = loss + label_weight * terms["label"]
    return {"loss": loss, **terms}
