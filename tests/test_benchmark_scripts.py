"""The benchmark scripts run and print their ratios (the figures themselves belong to the README, not to a test)."""

import re
import subprocess
import sys

import pytest
import torch
from training_testing import REPO, child_env


pytestmark = pytest.mark.subprocess


def test_cnn_benchmark_prints_a_row_of_ratios_per_model():
    command = [sys.executable, str(REPO / "scripts" / "benchmark_cnn.py"), "--models", "resnet18", "--image-size"]
    command += ["32", "--batch-size", "2", "--repeats", "5"]
    completed = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (row,) = [line for line in completed.stdout.splitlines() if line.startswith("resnet18 32px")]
    source, bcos, ratio, explained, cost = (float(value) for value in row.split()[2:])
    assert source > 0 and bcos > 0 and explained > 0
    assert abs(ratio - bcos / source) <= 0.01  # the ratio is of the two throughputs printed beside it
    assert re.search(r"targets: fwd ratio >= 0\.80", completed.stdout)
    assert cost > 1  # an explanation is at least a forward pass


def test_transformer_benchmark_prints_its_ratios_and_the_ratio_on_the_source_kernels():
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--models", "vit", "--batch-size", "1"]
    command += ["--repeats", "1", "--device", "cpu"]
    completed = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (row,) = [line for line in completed.stdout.splitlines() if line.startswith("ViT-S/16 224px")]
    source, bcos, ratio, explained, cost, step, same_kernels = (float(value) for value in row.split()[2:])
    assert min(source, bcos, explained, step, same_kernels) > 0
    assert abs(ratio - bcos / source) <= 0.01 * ratio + 0.01  # the ratio is of the two throughputs printed beside it
    assert cost > 1  # an explanation is at least a forward pass
    assert "MKL ratio: the forward ratio with the B-cos layers' matmuls on F.linear" in completed.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_benchmark_refuses_a_machine_without_cuda_before_running_anything(tmp_path):
    completed = subprocess.run(
        ["bash", str(REPO / "scripts" / "benchmark_gpu.sh"), str(tmp_path / "gpu")],
        capture_output=True, text=True, env=child_env(), timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1
    assert "no CUDA device" in completed.stderr
    assert list((tmp_path / "gpu").iterdir()) == []
