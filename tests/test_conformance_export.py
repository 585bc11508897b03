"""The B-cos models trace: torch.export, transformers' exporter and torch.compile(fullgraph=True) capture the whole
forward pass, and the captured graphs still refuse normalised images. The [0, 1] check reads no value back to the
host outside eager CPU runs: a forward pass on the meta device (where any such read fails) goes through.
"""

import pytest
import torch
from test_conformance_outputs import build, images


MAIN = {"classifier": "logits", "tower": "image_embeds"}


def _first(out):
    return out[0] if isinstance(out, tuple) else next(iter(out.values()))


@pytest.mark.parametrize("kind", ["classifier", "tower"])
def test_torch_export_captures_the_forward_pass_and_keeps_the_range_check(kind):
    model, x = build(kind), images()
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        expected = model(pixel_values=x)[MAIN[kind]]
    assert torch.allclose(_first(program.module()(x)), expected, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"pixel_values must lie in \[0, 1\]"):
        program.module()((x - 0.5) / 0.25)


@pytest.mark.parametrize("kind", ["classifier", "tower"])
def test_torch_export_keeps_the_batch_size_dynamic(kind):
    model, x = build(kind), images()
    x = torch.cat([x, x, x])
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=2, max=64)},))
    for size in (2, len(x), 9):
        batch = torch.rand(size, *x.shape[1:])
        with torch.no_grad():
            expected = model(pixel_values=batch)[MAIN[kind]]
        assert torch.allclose(_first(program.module()(batch)), expected, atol=1e-6)


@pytest.mark.slow  # compiling takes seconds
@pytest.mark.parametrize("kind", ["classifier", "tower"])
def test_torch_compile_fullgraph(kind):
    torch._dynamo.reset()
    model, x = build(kind), images()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(pixel_values=x)[MAIN[kind]], model(pixel_values=x)[MAIN[kind]], atol=1e-6)
        with pytest.raises(RuntimeError, match=r"pixel_values must lie in \[0, 1\]"):
            compiled(pixel_values=x * 4 - 2)


@pytest.mark.slow
def test_a_compiled_model_detaches_in_explanation_mode_and_only_there():
    """The compiled graph is guarded on explanation mode (a per-thread setting): inside it, the input gradient is the
    explanation's dynamic linear map; outside, autograd's whole gradient."""
    torch._dynamo.reset()
    model, x = build("classifier"), images()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")

    def input_gradient(run):
        pixels = x.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(run(pixel_values=pixels).logits[:, 0].sum(), pixels)
        return gradient

    whole = input_gradient(compiled)
    with model.explanation_mode():
        detached, eager_detached = input_gradient(compiled), input_gradient(model)
    torch.testing.assert_close(whole, input_gradient(model), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(detached, eager_detached, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(detached, whole, rtol=1e-2)
    torch.testing.assert_close(input_gradient(compiled), whole, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classifier", "tower"])
def test_a_compiled_training_step_gives_the_eager_gradients(kind):
    torch._dynamo.reset()
    model, x = build(kind), images()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    gradients = []
    for run in (model, compiled):
        model.zero_grad()
        run(pixel_values=x)[MAIN[kind]].square().sum().backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    eager, traced = gradients
    assert eager.keys() == traced.keys() and any("patch_embeddings" in name for name in eager)
    for name, grad in eager.items():
        assert torch.allclose(traced[name], grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_transformers_dynamo_exporter():
    from transformers.exporters import DynamoConfig, DynamoExporter

    model, x = build("classifier"), images()
    exported = DynamoExporter().export(model, {"pixel_values": x}, config=DynamoConfig())
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    assert torch.allclose(_first(exported(pixel_values=x)), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["classifier", "tower"])
def test_the_forward_pass_reads_nothing_back_off_the_cpu(kind):
    """On the meta device a value read (``float(t)``, ``bool(t)``, ``.item()``) raises: none happens."""
    model = build(kind).to("meta")
    out = model(pixel_values=torch.empty(2, 3, 16, 16, device="meta"))
    assert out[MAIN[kind]].device.type == "meta"


def test_eager_cpu_keeps_the_readable_message():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values in \[-"):
        build("classifier")(pixel_values=images() * 4 - 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_forward_pass_does_not_synchronise():
    model = build("classifier").cuda()
    x = images().cuda()
    model(pixel_values=x)  # warm-up: lazy initialisation may synchronise once
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            model(pixel_values=x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
