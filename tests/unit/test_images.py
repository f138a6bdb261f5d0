"""The server images (not built here: no container engine): each installs exactly one
onnxruntime flavour, and the CPU and GPU runtimes are pinned to the same version."""

from __future__ import annotations

import re
import tomllib

from tests.support.cluster import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def test_cpu_and_gpu_runtimes_have_the_same_version() -> None:
    (cpu,) = EXTRAS["cpu"]
    (gpu,) = EXTRAS["gpu"]
    assert cpu.startswith("onnxruntime==") and gpu.startswith("onnxruntime-gpu==")
    assert cpu.split("==")[1] == gpu.split("==")[1]


def test_neither_runtime_is_a_base_dependency() -> None:
    assert not [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("onnxruntime")]


def test_each_image_installs_one_flavour_and_runs_as_the_pod_user() -> None:
    for image, extra in (("server", "cpu"), ("server-gpu", "gpu")):
        text = (ROOT / "images" / image / "Dockerfile").read_text()
        installs = re.findall(
            r'pip install (?:\$PIP_INSTALL_ARGS )?-c requirements/constraints.txt "\.\[(\w+)\]"',
            text,
        )
        assert installs == [extra], image
        assert "USER 10001:10001" in text
