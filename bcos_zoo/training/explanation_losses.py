"""Losses on explanations: the localisation losses of model guidance (energy, L1, RRR, PPCE) and the explanation term
of e2KD, as plain functions, and the differentiable attributions they are applied to (B-cos, IxG, GradCAM).

Both need explanations that can be differentiated: in explanation mode a B-cos model is the dynamic linear map
``y = W(x) e + c`` of its encoded input ``e = [x, 1 - x]``, and ``W(x)`` is a gradient. Taking that gradient with
``create_graph=True`` keeps it a function of the weights, so a loss on ``W(x)`` (or on the contributions
``e * W(x)``) trains the model. The dynamic factors stay detached, as in every explanation: the loss shapes the
linear map, not the factors that select it.

At a hidden layer ``l`` the same holds for the layer's output ``a_l``: ``y = W_l(x) a_l + c_l``, and the per-position
contributions ``a_l * dy/da_l`` (summed over channels) are upsampled bilinearly to the image, as the model guidance
paper does for its intermediate-layer explanations.

The model guidance paper (Rao et al., ICCV 2023) also guides post-hoc attributions of the same model, taken in its
ordinary (not explanation) mode: Input x Gradient (the same product without the detaches) and GradCAM (the
activation weighted by its spatially averaged gradient, summed over channels, then ReLU), both differentiable with
``create_graph=True``. :func:`attributions` gives any of the three at the input or at a hidden layer.
"""

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..modeling.bcos_cnn import BcosBatchNorm2d
from ..modeling.bcos_layers import encode_inverse, explanation_mode
from ..modeling.explanation import BcosExplanation, compute_explanation, resolve_target


INPUT_LAYER = "input"
ATTRIBUTION_METHODS = ("bcos", "ixg", "gradcam")


@contextlib.contextmanager
def frozen_running_statistics(model: nn.Module):
    """BatchNorm layers in training mode keep normalising with their batch statistics but leave their running
    statistics alone: a second forward pass of a training step (for an explanation, over a subset of the batch)
    then does not count twice, or with a batch of a few boxed images, in what evaluation uses. Every BatchNorm, the
    B-cos CNNs' and torch's, gets momentum 0 for the while (and torch's its count of batches back, which it counts
    whatever the momentum, and which a cumulative average, ``momentum=None``, divides by)."""
    norms = [
        module for module in model.modules() if isinstance(module, (BcosBatchNorm2d, nn.modules.batchnorm._BatchNorm))
    ]
    counts = [getattr(module, "num_batches_tracked", None) for module in norms]
    saved = [(module.momentum, None if count is None else count.clone()) for module, count in zip(norms, counts)]
    for module in norms:
        module.momentum = 0.0
    try:
        yield
    finally:
        for module, (momentum, count) in zip(norms, saved):
            module.momentum = momentum
            if count is not None:
                module.num_batches_tracked.copy_(count)


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


def token_layout(model: nn.Module, image_size: tuple[int, int]) -> tuple[int, int, int]:
    """``(leading, h, w)``: how a token model lays out an (H, W) image, ``leading`` tokens that are not patches (its
    class token) before the h x w patches in row order.

    A patch covers the model's patch size (read from the module that cuts patches) times the stride of its
    convolutional stem (a ViT-C's) in pixels; the stem's padded stride-2 convolutions round each side up.
    """
    cutter = next((module for module in model.modules() if isinstance(getattr(module, "patch_size", None), int)), None)
    if cutter is None:
        raise ValueError(f"{type(model).__name__} cuts no patches, so its token outputs have no grid to be laid on")
    stride, patch = getattr(cutter, "stem_stride", 1), cutter.patch_size
    height, width = (-(-side // stride) // patch for side in image_size)
    return int(bool(getattr(model.config, "use_class_token", False))), height, width


def spatial_contributions(
    activation: torch.Tensor, gradient: torch.Tensor, layout: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """(N, h, w) per-position contributions ``sum_channels a * dy/da`` of a hidden layer.

    Convolutional maps (N, C, h, w) are summed over channels; token sequences (N, T, D) over features and laid out as
    the model lays out the image (``layout``, :func:`token_layout`): its leading tokens (a class token) dropped, the
    rest on its patch grid, which need not be square. A token count that is not the layout's is refused, rather
    than scrambled onto a grid it does not fill.
    """
    contributions = activation * gradient
    if contributions.ndim == 4:
        return contributions.sum(dim=1)
    if contributions.ndim == 3:
        if layout is None:
            raise ValueError("a layer of tokens needs the model's token layout (token_layout) to be laid on its grid")
        tokens, (leading, height, width) = contributions.sum(dim=2), layout
        if tokens.shape[1] != leading + height * width:
            raise ValueError(
                f"the layer gives {tokens.shape[1]} tokens per image, but the model lays this image out as "
                f"{leading} class token(s) and a {height}x{width} patch grid ({leading + height * width} tokens): "
                "explain a layer whose outputs are the patch tokens."
            )
        return tokens[:, leading:].reshape(-1, height, width)
    raise ValueError(f"a hidden layer's output must be (N, C, h, w) or (N, T, D), got {tuple(activation.shape)}")


def _hidden_map(model: nn.Module, pixel_values: torch.Tensor, activation: torch.Tensor, gradient: torch.Tensor):
    """:func:`spatial_contributions` of a layer of ``model`` explaining ``pixel_values``."""
    layout = token_layout(model, tuple(pixel_values.shape[-2:])) if activation.ndim == 3 else None
    return spatial_contributions(activation, gradient, layout)


def twice_differentiable_attention(create_graph: bool):
    """With ``create_graph``, attention computed by its written-out formula (softmax of products), whose gradient can
    be differentiated again: a loss on a gradient in ordinary mode (Input x Gradient, a hidden layer's)
    backpropagates through it, which the fused kernels cannot (explanation mode writes it out itself). Without, the
    fused kernels stay."""
    return sdpa_kernel(SDPBackend.MATH) if create_graph else contextlib.nullcontext()


def _input_gradient(model: nn.Module, pixel_values: torch.Tensor, target: torch.Tensor, create_graph: bool):
    """(feature, d target logit / d feature) at the input in ordinary mode: the feature is the ``[x, 1 - x]``
    encoding for models that expose ``_logits`` of it (the CNN families, as the model guidance paper takes it),
    else the [0, 1] image itself."""
    with torch.enable_grad(), twice_differentiable_attention(create_graph):
        if hasattr(model, "_logits"):
            feature = encode_inverse(pixel_values.detach().to(model.dtype)).requires_grad_(True)
            logits = model._logits(feature)
            logits = logits[0] if isinstance(logits, tuple) else logits
        else:
            feature = pixel_values.detach().to(model.dtype).requires_grad_(True)
            logits = model(pixel_values=feature).logits
        target = resolve_target(target, logits.detach())
        (gradient,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), feature, create_graph=create_graph)
    return feature, gradient


def _layer_gradient(
    model: nn.Module, pixel_values: torch.Tensor, target: torch.Tensor, layer: str, explain: bool, create_graph: bool
):
    """(activation of ``layer``, d target logit / d activation), in explanation mode when ``explain``."""
    modules = dict(model.named_modules())
    if layer not in modules:
        hidden = [name for name in modules if name.count(".") <= 3 and name]
        raise ValueError(f"the model has no layer {layer!r}; its layers include: {', '.join(hidden[:40])}")
    captured = []
    handle = modules[layer].register_forward_hook(lambda module, inputs, output: captured.append(_layer_output(output)))
    try:
        explaining = explanation_mode(model) if explain else contextlib.nullcontext()
        with torch.enable_grad(), explaining, twice_differentiable_attention(create_graph):
            logits = model(pixel_values=pixel_values).logits
            if len(captured) != 1:
                raise ValueError(f"layer {layer!r} ran {len(captured)} times in one forward pass; choose another")
            target = resolve_target(target, logits.detach())
            selected = logits.gather(1, target[:, None]).sum()
            (gradient,) = torch.autograd.grad(selected, captured[0], create_graph=create_graph)
    finally:
        handle.remove()
    return captured[0], gradient


def gradcam_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """(N, h, w) GradCAM: ReLU of the channels of a (N, C, h, w) activation weighted by their mean gradient."""
    if activation.ndim != 4:
        raise ValueError(f"GradCAM needs a convolutional (N, C, h, w) layer output, got {tuple(activation.shape)}")
    return F.relu((activation * gradient.mean(dim=(2, 3), keepdim=True)).sum(dim=1))


def attributions(
    model: nn.Module,
    pixel_values: torch.Tensor,
    target: torch.Tensor,
    method: str = "bcos",
    layer: str = INPUT_LAYER,
    create_graph: bool = True,
) -> torch.Tensor:
    """(N, H, W) attributions of the ``target`` logits, differentiable with ``create_graph``, at the image size.

    ``method``: ``"bcos"`` (the model's own contributions, in explanation mode), ``"ixg"`` (Input x Gradient in
    ordinary mode) or ``"gradcam"`` (only at a hidden layer). ``layer``: ``"input"`` or a module name; a hidden
    layer's map is upsampled bilinearly to the image.
    """
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"attribution method must be one of {ATTRIBUTION_METHODS}, got {method!r}")
    if layer == INPUT_LAYER:
        if method == "gradcam":
            raise ValueError("GradCAM explains a hidden layer; pass its module name as the layer")
        if method == "bcos":
            explanation = differentiable_explanation(model, pixel_values, target)
            return explanation.contributions if create_graph else explanation.contributions.detach()
        feature, gradient = _input_gradient(model, pixel_values, target, create_graph)
        return (feature * gradient).sum(dim=1)
    activation, gradient = _layer_gradient(model, pixel_values, target, layer, method == "bcos", create_graph)
    maps = (
        gradcam_map(activation, gradient)
        if method == "gradcam"
        else _hidden_map(model, pixel_values, activation, gradient)
    )
    upsampled = F.interpolate(maps[:, None], size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    return upsampled[:, 0]


def energy_loss(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) the energy loss of model guidance (Rao et al., 2023), one value per image:

        L_loc = 1 - sum_{p in M} A+_p / sum_p A+_p,      A+ = max(A, 0),

    with ``A`` (N, H, W) the attribution of the explained class and ``M`` (N, H, W) the union of that class's boxes.
    An image without any positive attribution has nothing inside the boxes and scores 1. The loss is 0 when all
    positive attribution lies in the boxes, whatever the negative attribution does.
    """
    _check_shapes(attributions, masks)
    positive = attributions.clamp_min(0)
    total = positive.sum(dim=(1, 2))
    inside = (positive * masks.to(positive.dtype)).sum(dim=(1, 2))
    share = torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))
    return 1 - share


def max_normalised(attributions: torch.Tensor, positive: bool) -> torch.Tensor:
    """Each map divided by its largest magnitude (maps of zeros stay zero), after ``max(A, 0)`` when ``positive``:
    the model guidance paper's preparation of attributions for the L1, PPCE (positive) and RRR (signed) losses.
    The maximum is part of the graph."""
    if positive:
        attributions = attributions.clamp_min(0)
    largest = attributions.abs().amax(dim=(1, 2), keepdim=True)
    return torch.where(largest > 0, attributions / largest.where(largest > 0, torch.ones_like(largest)), attributions)


def l1_loss(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) the L1 localisation loss (GRADIA's, as the model guidance paper uses it): the mean over pixels of
    ``|A_hat - M|``, with ``A_hat`` the positive attribution divided by its maximum. 0 when the positive attribution
    is uniform inside the box and zero outside."""
    _check_shapes(attributions, masks)
    return (max_normalised(attributions, positive=True) - masks.to(attributions.dtype)).abs().mean(dim=(1, 2))


def rrr_loss(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) "right for the right reasons" (Ross et al., 2017) as the model guidance paper adapts it (RRR*): the sum
    over pixels outside the box of the squared attribution, signed, divided by its largest magnitude. Ross et al.
    penalise the input gradient of the log-probabilities; here the attribution of the guided method takes its
    place (for ``ixg`` at the input: gradient times input)."""
    _check_shapes(attributions, masks)
    outside = ~masks.bool()
    return (max_normalised(attributions, positive=False).square() * outside).sum(dim=(1, 2))


def ppce_loss(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) per-pixel cross-entropy (HAICS, as the model guidance paper uses it): the mean over the pixels inside the
    box of ``-log A_hat`` (torch's binary cross-entropy towards 1, whose log is clamped at -100),
    ``A_hat`` the positive attribution divided by its maximum. Outside the box nothing is asked; 0 without a box."""
    _check_shapes(attributions, masks)
    inside = masks.bool()
    scaled = max_normalised(attributions, positive=True)
    per_pixel = F.binary_cross_entropy(scaled, torch.ones_like(scaled), reduction="none") * inside
    count = inside.sum(dim=(1, 2))
    return per_pixel.sum(dim=(1, 2)) / count.clamp_min(1)


GUIDANCE_LOSSES = {"energy": energy_loss, "l1": l1_loss, "rrr": rrr_loss, "ppce": ppce_loss}


def _check_shapes(attributions: torch.Tensor, masks: torch.Tensor) -> None:
    if attributions.shape != masks.shape:
        raise ValueError(f"attributions {tuple(attributions.shape)} and masks {tuple(masks.shape)} differ in shape")


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
) -> dict[str, torch.Tensor]:
    """Explanation-enhanced knowledge distillation (Parchami-Araghi et al., 2024), averaged over the batch:

        L = lambda_kd T^2 KL(softmax(z_t / T) || softmax(z_s / T)) + lambda_exp (1 - cos(vec E_s, vec E_t)),

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
    return {"loss": loss, **terms}
