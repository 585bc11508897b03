"""The parts a fine-tuning run is made of: recipes, data sources, adaptive gradient clipping, stopping on Ctrl-C."""

import gc
import gzip
import signal
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

import bcos_zoo.data.datasets as datasets_module
from bcos_zoo.data.datasets import (
    FileImages,
    TransformedImages,
    image_folder,
    load_dataset_splits,
    read_idx,
)
from bcos_zoo.data.preprocessing import training_transform
from bcos_zoo.training.recipe import recipe_record, training_differences
from bcos_zoo.training.trainer import (
    LogAtCheckpoints,
    StopOnInterrupt,
    adaptive_clip_grad_,
    mean_training_loss,
    training_arguments,
    with_precision,
)
from bcos_zoo.zoo.cli import run_script
from bcos_zoo.zoo.recipes import RECIPES, get_recipe


def test_every_recipe_names_its_source_data_and_hub_repo():
    for name, recipe in RECIPES.items():
        assert recipe.name == name
        assert recipe.source and recipe.dataset and "/" in recipe.hub_model_id
    assert {"bcos-vit-ti", "bcos-vit-s", "bcos-vit-b", "bcos-clip-vit-b32", "bcos-clip-vit-b16"} <= set(RECIPES)


def test_imagenet_recipes_use_the_papers_learning_rates():
    # B-cosification: Adam lr 1e-3 for ViTs, 1e-4 for CNNs; the CLIP towers are distilled at 1e-4
    imagenet = [r for r in RECIPES.values() if r.dataset == "ILSVRC/imagenet-1k" and r.task == "classification"]
    vits = [recipe for recipe in imagenet if "vit" in recipe.name]
    assert len(vits) >= 3 and {recipe.learning_rate for recipe in vits} == {1e-3}
    assert {recipe.learning_rate for recipe in imagenet if recipe not in vits} == {1e-4}
    assert {recipe.learning_rate for recipe in RECIPES.values() if recipe.task == "clip-distillation"} == {1e-4}


def test_unknown_recipe_error_lists_the_catalogue():
    with pytest.raises(ValueError, match="bcos-vit-s"):
        get_recipe("bcos-vit-xxl")


def test_overrides_replace_fields_and_none_keeps_the_recipe_value():
    recipe = get_recipe("bcos-vit-s").with_overrides(learning_rate=3e-5, epochs=None)
    assert recipe.learning_rate == 3e-5 and recipe.epochs == get_recipe("bcos-vit-s").epochs
    with pytest.raises(ValueError, match="unknown recipe fields"):
        recipe.with_overrides(lr=1.0)


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_read_back_exactly(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28))
    write_idx(tmp_path / "images.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "images.gz"), images)


def test_truncated_idx_file_is_refused(tmp_path):
    write_idx(tmp_path / "images.gz", np.zeros((5, 28, 28)))
    data = gzip.decompress((tmp_path / "images.gz").read_bytes())
    (tmp_path / "cut.gz").write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "cut.gz")


def first_idx_item(folder: Path, prefix: str) -> tuple[np.ndarray, int]:
    """The first 28x28 image and label of an IDX file pair, read straight from the bytes (16 and 8 byte headers)."""
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz") as handle:
        image = np.frombuffer(handle.read(16 + 28 * 28)[16:], dtype=np.uint8).reshape(28, 28)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as handle:
        label = handle.read(9)[8]
    return image, label


def test_fashion_mnist_comes_from_the_debian_package(fashion_mnist):
    data = load_dataset_splits("fashion-mnist")
    assert (len(data.train), len(data.validation), len(data.class_names)) == (60000, 10000, 10)
    for split, prefix in ((data.train, "train"), (data.validation, "t10k")):
        image, label = split[0]
        pixels, expected_label = first_idx_item(fashion_mnist, prefix)
        assert image.mode == "RGB" and image.size == (28, 28) and label == expected_label
        assert (np.asarray(image) == pixels[:, :, None]).all()  # the grey garment in all three channels


def make_folder(root, names=("cat", "dog"), count=5):
    for name in names:
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (8, 8), (index, 0, 0)).save(root / name / f"{index}.png")


@pytest.mark.parametrize("content", ["not an image", "truncated"])
def test_an_unreadable_image_file_is_named_with_the_fix(tmp_path, content):
    path = tmp_path / "broken.png"
    if content == "truncated":
        Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8) + 7).save(path)
        path.write_bytes(path.read_bytes()[:80])
    else:
        path.write_bytes(b"plain text")
    with pytest.raises(ValueError, match=r"broken\.png could not be read as an image.*Remove or replace it.*--resume"):
        FileImages([path], [0])[0]


@pytest.mark.slow  # under pytest the failed worker takes the DataLoader's 5 s status interval to shut down
def test_a_dataloader_worker_s_error_is_reported_as_its_own_line(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"plain text")

    def main() -> None:
        for _ in DataLoader(FileImages([tmp_path / "broken.png"], [0]), num_workers=1, collate_fn=list):
            pass

    assert run_script(main) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'broken.png'} could not be read")


def test_image_folder_uses_its_train_and_validation_folders(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "validation", count=2)
    data = image_folder(tmp_path)
    assert data.class_names == ["cat", "dog"]
    assert (len(data.train), len(data.validation)) == (10, 4)
    assert (data.evaluation_split, data.held_out) == ("validation", 0.0)


def test_a_validation_class_folder_the_training_folder_lacks_is_refused_not_dropped(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "validation", count=2)
    (tmp_path / "validation" / "dog").rename(tmp_path / "validation" / "Dog")
    with pytest.raises(ValueError, match=r"validation has class folders that .*train lacks: \['Dog'\]"):
        image_folder(tmp_path)


def test_a_class_folder_without_images_is_refused(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "bird").mkdir()
    (tmp_path / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folders without images .*\['bird'\]"):
        image_folder(tmp_path)


def test_image_folder_without_a_split_holds_out_a_seeded_tenth(tmp_path):
    make_folder(tmp_path, count=10)
    first, second = image_folder(tmp_path), image_folder(tmp_path)
    assert (len(first.train), len(first.validation)) == (18, 2)
    assert first.validation.indices == second.validation.indices
    assert (first.evaluation_split, first.held_out) == ("train", 0.1)


class _CaseBlindPath(type(Path())):
    """A path that sorts as Windows' paths do: by their parts without case."""

    def __lt__(self, other):
        return [part.lower() for part in self.parts] < [part.lower() for part in other.parts]


def test_the_held_out_share_of_a_folder_is_the_same_where_paths_sort_without_case(tmp_path, monkeypatch):
    """Windows compares paths case-blind, POSIX by code point: the files' order, which the seeded share is drawn
    from, must not depend on it (and the digest a resume checks, taken over POSIX names, could not tell)."""
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for index, stem in enumerate(["IMG_1", "img_0", "Img_2", "img_3", "IMG_4"]):
            Image.new("RGB", (8, 8), (index, 0, 0)).save(tmp_path / name / f"{stem}.png")
    here = image_folder(tmp_path, validation_fraction=0.3)
    monkeypatch.setattr(datasets_module, "Path", _CaseBlindPath)
    elsewhere = image_folder(tmp_path, validation_fraction=0.3)
    assert [str(path) for path in elsewhere.train.dataset.files] == [str(path) for path in here.train.dataset.files]
    assert elsewhere.validation.indices == here.validation.indices


def test_folder_without_class_folders_says_what_layout_is_expected(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "lonely.png")
    with pytest.raises(ValueError, match="class sub-folders"):
        load_dataset_splits(str(tmp_path))


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    pairs = [
        (Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)), 0) for i in range(2)
    ]
    dataset = TransformedImages(pairs, training_transform(32), seed=7)
    first = dataset[1]["pixel_values"]
    torch.manual_seed(123)  # the global random state must not matter
    assert torch.equal(dataset[1]["pixel_values"], first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["pixel_values"], first)


def test_the_largest_seed_a_recipe_takes_seeds_every_item_of_a_late_epoch(tmp_path):
    pairs = [(Image.fromarray(np.full((40, 40, 3), 9, dtype=np.uint8)), 0)] * 3
    dataset = TransformedImages(pairs, training_transform(32), seed=2**32 - 1)  # item seeds beyond int64
    dataset.set_epoch(89)
    assert torch.equal(dataset[2]["pixel_values"], dataset[2]["pixel_values"])


def test_adaptive_clipping_bounds_each_row_relative_to_its_weight_norm():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    weight.grad = torch.tensor([[0.0, 10.0], [0.001, 0.0]])
    adaptive_clip_grad_([weight], clip=0.1)
    torch.testing.assert_close(weight.grad[0].norm(), torch.tensor(0.5))  # 0.1 * |row| = 0.5 < 10: clipped
    torch.testing.assert_close(weight.grad[1], torch.tensor([0.001, 0.0]))  # already below 0.1 * 0.5: untouched


class _Finaliser:
    """Does its work in ``__del__``, where Python prints and drops any exception, a KeyboardInterrupt included."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C arriving while a finaliser runs


@pytest.fixture
def python_ctrl_c_handler():
    """Python's own Ctrl-C handler, also where the tests were started with SIGINT ignored (as a background job)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_ctrl_c_handler")
def test_ctrl_c_swallowed_by_a_finaliser_still_stops_several_processes_at_the_step_end(monkeypatch):
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    stop = StopOnInterrupt()
    stop.on_train_begin(SimpleNamespace(world_size=2), None, None)  # several processes stop at once
    try:
        finaliser = _Finaliser()
        del finaliser
        gc.collect()
        assert dropped == [KeyboardInterrupt]
        with pytest.raises(KeyboardInterrupt):
            stop.on_step_end(None, None, None)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _CtrlC(TrainerCallback):
    """Presses Ctrl-C (or sends ``signum``) ``times`` times during step ``step`` (counted from 1)."""

    def __init__(self, step: int, times: int, signum: int = signal.SIGINT):
        self.step, self.times, self.signum = step, times, signum

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            for _ in range(self.times):
                signal.raise_signal(self.signum)


def _interrupted_training(tmp_path, times: int, signum: int = signal.SIGINT) -> Trainer:
    torch.manual_seed(0)
    data = [{"x": torch.randn(3), "y": torch.randn(())} for _ in range(32)]
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=8, save_steps=100, per_device_train_batch_size=2, report_to=[],
        use_cpu=True, disable_tqdm=True, eval_strategy="epoch",
    )  # fmt: skip
    callbacks = [StopOnInterrupt(), _CtrlC(step=3, times=times, signum=signum)]
    trainer = Trainer(model=_Regression(), args=arguments, train_dataset=data, eval_dataset=data, callbacks=callbacks)
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert signal.getsignal(signum) is before  # put back
    return trainer


class _Terminated(Exception):
    """What the test process does on SIGTERM, in place of dying."""


@pytest.fixture
def sigterm_raises():
    def terminated(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.usefixtures("sigterm_raises")
def test_sigterm_saves_the_running_step_as_a_checkpoint_and_ends_training_as_interrupted(tmp_path, capsys):
    """What ``kill``, a container's stop and a cluster's scheduler send before they kill."""
    trainer = _interrupted_training(tmp_path, times=1, signum=signal.SIGTERM)
    assert trainer.state.global_step == 3 and [path.name for path in tmp_path.glob("checkpoint-*")] == ["checkpoint-3"]
    assert "SIGTERM: a checkpoint at the end of this step" in capsys.readouterr().err


@pytest.mark.usefixtures("sigterm_raises")
def test_a_second_sigterm_hands_it_to_the_handler_training_began_with(tmp_path, capsys):
    with pytest.raises(_Terminated):
        _interrupted_training(tmp_path, times=2, signum=signal.SIGTERM)
    assert "SIGTERM: a checkpoint at the end of this step" in capsys.readouterr().err  # the first was noted
    assert not list(tmp_path.glob("checkpoint-*"))


@pytest.mark.usefixtures("python_ctrl_c_handler")
def test_ctrl_c_saves_the_running_step_as_a_checkpoint_and_ends_training_as_interrupted(tmp_path, capsys):
    trainer = _interrupted_training(tmp_path, times=1)
    assert trainer.state.global_step == 3 and [path.name for path in tmp_path.glob("checkpoint-*")] == ["checkpoint-3"]
    assert "Stopped after step 3, saved as checkpoint-3." in capsys.readouterr().err
    assert not [entry for entry in trainer.state.log_history if "eval_loss" in entry]  # the cut epoch is not evaluated


@pytest.mark.usefixtures("python_ctrl_c_handler")
def test_training_again_after_a_ctrl_c_trains_until_the_next(tmp_path):
    trainer = _interrupted_training(tmp_path, times=1)
    trainer.callback_handler.callbacks = [c for c in trainer.callback_handler.callbacks if not isinstance(c, _CtrlC)]
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert trainer.state.global_step == 8


@pytest.mark.usefixtures("python_ctrl_c_handler")
def test_a_data_loading_worker_leaves_ctrl_c_to_the_main_process():
    stop = StopOnInterrupt()
    stop.on_train_begin(None, None, None)
    try:
        stop.pid = -1  # as in a worker forked with the handler
        signal.raise_signal(signal.SIGINT)
        assert not stop.interrupted
    finally:
        stop.restore()


@pytest.mark.usefixtures("python_ctrl_c_handler")
def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path):
    _interrupted_training(tmp_path, times=2)
    assert not list(tmp_path.glob("checkpoint-*"))


def test_the_recipe_catalogue_in_the_docs_lists_every_recipe():
    catalogue = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    for name, recipe in RECIPES.items():
        assert f"| `{name}` |" in catalogue and recipe.hub_model_id in catalogue


class _Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.linear(x)[:, 0], y)}


def test_every_checkpoint_and_the_last_step_are_logged_so_the_run_s_mean_loss_survives_a_resume(tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    data = [{"x": torch.randn(3), "y": torch.randn(())} for _ in range(32)]
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=7, save_steps=3, logging_steps=2, per_device_train_batch_size=2,
        learning_rate=0.1, report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=_Regression(), args=arguments, train_dataset=data, callbacks=[LogAtCheckpoints()])
    output = trainer.train()
    logged = [entry["step"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [2, 3, 4, 6, 7]  # every logging step, each checkpoint (3, 6) and the last step
    assert mean_training_loss(trainer.state.log_history) == pytest.approx(output.training_loss, rel=1e-6)


def test_mean_training_loss_weights_each_logged_mean_by_its_steps():
    history = [{"loss": 4.0, "step": 2}, {"learning_rate": 0.1, "step": 2}, {"loss": 1.0, "step": 3}, {"train_loss": 9}]
    assert mean_training_loss(history) == pytest.approx((4.0 * 2 + 1.0) / 3)
    assert mean_training_loss([]) == 0.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be at least 1, got 0"),
        ("gradient_accumulation_steps", 0, "gradient_accumulation_steps must be at least 1"),
        ("max_eval_samples", 0, "max_eval_samples must be at least 1"),
        ("save_steps", -5, "save_steps must be at least 1"),
        ("epochs", -1.0, "epochs must be at least 0"),
        ("epochs", 0.0, r"epochs must be positive \(or max_steps set\), got 0"),
        ("epochs", float("inf"), "epochs must be finite, got inf"),
        ("seed", -1, r"seed must lie in \[0, 2\*\*32\), got -1"),
        ("teacher", "org/teacher", r"teacher is read by the explanation-distillation task only \(--task\)"),
        ("guidance_loss", "l1", r"guidance_loss is read by the guided-classification task only"),
        ("seed", 2**32, r"seed must lie in \[0, 2\*\*32\)"),
        ("learning_rate", 0.0, "learning_rate must be positive"),
        ("warmup_ratio", 1.5, r"warmup_ratio must lie in \[0, 1\]"),
        ("box_fraction", float("nan"), r"box_fraction must lie in \[0, 1\]"),
        ("crop_scale", (0.9, 0.1), "crop_scale must be"),
        ("architecture", {"hidden_size": 8, "b": 1.5}, r"architecture sets \['b'\]: B comes from b \(--b\)"),
        ("architecture", {"num_labels": 3}, r"architecture sets \['num_labels'\]: .* the classes from the data"),
    ],
)
def test_a_recipe_value_no_run_can_use_is_refused_when_the_recipe_is_made(field, value, message):
    with pytest.raises(ValueError, match=rf"recipe 'bcos-vit-s': {message}"):
        get_recipe("bcos-vit-s").with_overrides(**{field: value})


def test_a_field_of_another_task_is_no_training_difference_of_a_stored_run():
    """An e2KD run stored when its recipe carried guidance_weight 0 (which e2KD never read) is resumed as the same
    training; a field the task reads still differs."""
    recipe = get_recipe("bcos-resnet-e2kd-decoys")
    stored = recipe_record(recipe) | {"guidance_weight": 0.0}
    assert training_differences(stored, recipe) == []
    assert training_differences(stored | {"kd_temperature": 4.0}, recipe) == ["kd_temperature"]


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_training_arguments_refuse_a_cuda_device_the_machine_lacks(device, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    with pytest.raises(ValueError, match=f"--device {device}, but torch finds no CUDA device"):
        training_arguments(get_recipe("bcos-vit-fashion-mnist"), tmp_path, device=device)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_the_warmup_ratio_is_the_share_of_steps_whose_learning_rate_rises_a_ratio_of_1_included(ratio, tmp_path):
    from transformers import Trainer

    steps = 10
    recipe = get_recipe("bcos-vit-fashion-mnist").with_overrides(warmup_ratio=ratio, max_steps=steps)
    trainer = Trainer(model=_Regression(), args=training_arguments(recipe, tmp_path, device="cpu"))
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    factors = [trainer.lr_scheduler.lr_lambdas[0](step) for step in range(steps)]
    warmup = round(ratio * steps)
    assert factors[:warmup] == pytest.approx([step / warmup for step in range(warmup)])
    assert all(later < earlier for earlier, later in zip(factors[warmup:], factors[warmup + 1 :]))  # cosine decay


@pytest.mark.parametrize(
    ("launched", "asked", "expected"),
    [("no", "auto", "fp32"), ("bf16", "auto", "bf16"), ("bf16", "bf16", "bf16"), ("no", "bf16", "bf16")],
)
def test_the_precision_a_run_records_is_the_one_accelerate_launch_trains_in(monkeypatch, launched, asked, expected):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
    recipe = get_recipe("bcos-vit-fashion-mnist").with_overrides(precision=asked)
    assert with_precision(recipe, "cpu").precision == expected


@pytest.mark.parametrize(("launched", "asked"), [("bf16", "fp32"), ("fp16", "auto"), ("fp8", "bf16")])
def test_a_launch_in_another_precision_than_the_recipe_s_is_refused(monkeypatch, launched, asked):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
    with pytest.raises(ValueError, match=f"--mixed_precision {launched} and the recipe for precision {asked}"):
        with_precision(get_recipe("bcos-vit-fashion-mnist").with_overrides(precision=asked), "cpu")
