"""benchmarks/attention.py --device cuda stops at once with a clear message when no CUDA device is visible."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "attention.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the GPU grid would run")
def test_cuda_without_a_gpu_fails_clearly():
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--quick"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    assert "--device cuda" in out.stderr and "sees no CUDA device" in out.stderr and "--device cpu" in out.stderr
    assert out.stdout == ""  # nothing was measured
