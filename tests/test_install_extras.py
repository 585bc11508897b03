"""What each install of pyproject.toml can run, in a Python that sees only the distributions that install brings
(bcos_zoo's requirements with the extra's, and everything they require, as installed here): the core install
B-cosifies, explains and runs the pipelines, `train` fine-tunes, and each script starts under the extra it needs.
The test venv holds every extra, so a module that imports a package no extra declares passes every other test."""

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from training_testing import REPO, child_env, finetune_command, make_image_folder, make_vit_source


tomllib = pytest.importorskip("tomllib")  # Python 3.11+

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def declared(extras: set[str]) -> list[Requirement]:
    """bcos_zoo's requirements for ``extras``, read from pyproject.toml (an editable install's metadata may be older),
    its extras that name other extras of bcos_zoo unfolded."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional, requirements, todo = project["optional-dependencies"], list(project["dependencies"]), list(extras)
    seen = set()
    while todo:
        if (extra := todo.pop()) in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "bcos-zoo":
                todo.extend(requirement.extras)
            else:
                requirements.append(text)
    return [Requirement(text) for text in requirements]


def installed_closure(requirements: list[Requirement]) -> list[importlib.metadata.Distribution]:
    """The installed distributions that installing ``requirements`` pulls in."""
    installed = {canonicalize_name(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    environment, found = default_environment(), {}
    todo = [(requirement, "") for requirement in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        seen, asked = name in found, found.setdefault(name, set())
        if name not in installed or (seen and requirement.extras <= asked):  # nothing new to follow (or a cycle)
            continue
        asked |= requirement.extras
        for text in installed[name].requires or []:
            todo.extend((Requirement(text), wanted) for wanted in ["", *asked])
    return [installed[name] for name in found if name in installed]


def install_site(extras: set[str] | None, folder: Path, requirements: tuple[str, ...] = ()) -> Path:
    """A site folder of links to what an install of bcos_zoo with ``extras`` brings, with bcos_zoo's editable install
    of the repository (its path hook maps ``bcos_zoo.hub_cards`` to ``hub_cards/``); with ``extras=None``, to what
    installing ``requirements`` alone brings."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [Requirement(text) for text in requirements]
    if extras is not None:
        wanted += declared(extras)
        for editable in Path(sysconfig.get_paths()["purelib"]).glob("__editable__*bcos_zoo*"):
            (folder / editable.name).symlink_to(editable)
    for distribution in installed_closure(wanted):
        tops = {path.parts[0] for path in distribution.files or [] if not path.parts[0].startswith("..")}
        for top in tops - {"__pycache__"}:
            source = Path(distribution.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def run_in(site: Path, code: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``code`` (or a script: ``code`` a path) in a Python whose only site folder is ``site``, in ``cwd`` (which
    is on its path: the repository's, where bcos_zoo is importable)."""
    start = f"import site, sys; site.addsitedir({str(site)!r})\n"
    if code.endswith(".py"):
        start += f"import runpy; sys.argv = [{code!r}, *{list(args)!r}]; runpy.run_path({code!r}, run_name='__main__')"
    else:
        start += textwrap.dedent(code)
    env = child_env(HF_HUB_OFFLINE="1", PYTHONPATH="")
    return subprocess.run(
        [sys.executable, "-S", "-c", start], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


CORE_FLOW = """
    import torch
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, pipeline

    import bcos_zoo

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1, num_attention_heads=3,
                       intermediate_size=48, num_labels=3)
    model = bcos_zoo.BcosViTForImageClassification.from_pretrained_standard(ViTForImageClassification(config))
    x = torch.rand(2, 3, 32, 32)
    explanation = model.explain(x)
    total = explanation.contributions.sum((1, 2)) + explanation.bias
    assert torch.allclose(total, explanation.target_logits, atol=1e-4)
    pipe = pipeline("image-explanation", model=model, image_processor=model.default_image_processor())
    assert "explanation" in pipe(Image.new("RGB", (40, 40), "red"))[0]
    model.save_pretrained("{folder}")
    again = bcos_zoo.BcosViTForImageClassification.from_pretrained("{folder}")
    assert torch.equal(again(pixel_values=x).logits, model(pixel_values=x).logits)
    print("core install: ok")
"""


def test_the_core_install_b_cosifies_explains_saves_and_runs_the_pipeline(tmp_path):
    ran = run_in(install_site(set(), tmp_path / "site"), CORE_FLOW.format(folder=tmp_path / "saved"))
    assert ran.returncode == 0 and "core install: ok" in ran.stdout, ran.stderr[-3000:]


def test_the_core_install_lacks_what_the_extras_bring(tmp_path):
    """The premise of the other tests: the folder really holds less than the venv."""
    ran = run_in(install_site(set(), tmp_path / "site"), "import accelerate")
    assert ran.returncode != 0 and "No module named 'accelerate'" in ran.stderr


def test_the_train_install_fine_tunes_and_computes_the_seed_statistics(tmp_path):
    source = make_vit_source(tmp_path / "source")
    data = make_image_folder(tmp_path / "data", per_class=4)
    site = install_site({"train"}, tmp_path / "site")
    script, *args = finetune_command(source, data, tmp_path / "out")[1:]
    ran = run_in(site, script, *args)
    assert ran.returncode == 0 and (tmp_path / "out" / "repo" / "model.safetensors").is_file(), ran.stderr[-3000:]
    welch = "from bcos_zoo.zoo.seed_statistics import welch; print(welch([1.0, 1.2, 1.1], [2.0, 2.1, 1.9]))"
    ran = run_in(site, welch)
    assert ran.returncode == 0, ran.stderr[-3000:]


# each script, with the extra the docs name for it (the main job: the README's default, `demo`)
SCRIPTS = {
    "fashion_mnist.py": "demo",
    "finetune.py": "train",
    "evaluate_model.py": "eval",
    "reproduce.py": "eval",
    "reproduce_guidance.py": "eval",
    "push.py": "train",
}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_each_script_starts_under_the_extra_it_needs(tmp_path, script):
    ran = run_in(install_site({SCRIPTS[script]}, tmp_path / "site"), str(REPO / "scripts" / script), "--help")
    assert ran.returncode == 0 and "usage:" in ran.stdout, ran.stderr[-3000:]
    assert os.path.basename(script) in ran.stdout


def test_a_saved_folder_of_every_family_loads_and_explains_with_only_transformers_and_torch(tmp_path):
    """What a Hub user has: no bcos_zoo, no Pillow, no torchvision (the CLIP folder's processor is then skipped)."""
    import torch
    from tiny_models import TINY_CLASSIFIERS

    folders = []
    for family, build in TINY_CLASSIFIERS.items():
        torch.manual_seed(0)
        build().save_pretrained(tmp_path / family)
        folders.append(str(tmp_path / family))
    load = f"""
        import json, torch, transformers
        for folder in {folders!r}:
            auto_map = json.load(open(folder + "/config.json"))["auto_map"]
            name = next(key for key in sorted(auto_map) if key != "AutoConfig")
            model = getattr(transformers, name).from_pretrained(folder, trust_remote_code=True).eval()
            x = torch.rand(2, 3, 32, 32)
            if hasattr(model, "get_image_features"):
                explanation = model.explain(x, text_embeds=torch.randn(2, model.config.projection_dim))
            else:
                explanation = model.explain(x)
            total = explanation.contributions.sum((1, 2)) + explanation.bias
            assert torch.allclose(total, explanation.target_logits, atol=1e-4), folder
        from importlib.util import find_spec
        print("loaded without", [name for name in ("PIL", "torchvision", "bcos_zoo") if not find_spec(name)])
    """
    ran = run_in(install_site(None, tmp_path / "site", ("transformers", "torch")), load, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "loaded without ['PIL', 'torchvision', 'bcos_zoo']" in ran.stdout


def test_importing_the_package_loads_no_training_evaluation_or_plotting_machinery():
    """Loading and explaining a model need none of it: `import bcos_zoo` stays as light as transformers allows."""
    code = """
import sys
import bcos_zoo
heavy = ("bcos_zoo.training", "datasets", "pandas", "timm", "evaluate", "captum", "matplotlib", "gradio")
print(sorted(name for name in heavy if name in sys.modules))
print(sorted(set(bcos_zoo.__all__) - set(dir(bcos_zoo))))  # dir lists what is imported on first use too
print(bcos_zoo.siglip_distillation_loss.__name__)
"""
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=REPO)
    assert ran.stdout.splitlines()[-3:] == ["[]", "[]", "siglip_distillation_loss"], ran.stderr[-3000:]


def test_a_reproduction_under_the_train_install_is_refused_before_anything_trains(tmp_path):
    """Its post-hoc methods need captum (the `eval` extra): said at once, not after hours of training."""
    script = str(REPO / "scripts" / "reproduce.py")
    output, work = tmp_path / "report", tmp_path / "work"
    site = install_site({"train"}, tmp_path / "site")
    ran = run_in(site, script, "--output-dir", str(output), "--work-dir", str(work), "--epochs", "1")
    assert ran.returncode == 2 and "needs captum" in ran.stderr and "bcos_zoo[eval]" in ran.stderr, ran.stderr[-3000:]
    assert not output.exists() and not work.exists()
