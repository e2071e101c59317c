"""benchmarks/gpu_check: the CPU half, here (no device call, nothing carried).

Parts, sha256s and reassembly on a small fake wheel; the device calls planned within a
call's 64 MiB; ``prepare --small`` with the project's training code; and ``run --cpu-only``
through the shell script with every heavy package (and every other streams module)
refused at import, as on the device machine's Python: it must say "CUDA provider
unavailable" and still report CPU placement and parity for every variant. And the CUDA
kernel table (streams/scoring/cuda_kernels.py) regenerated from the installed build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest

from streams.scoring.cuda_kernels import CUDA_KERNELS, SOURCE_VERSION

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
# What the device's Python lacks or the check must not need.
BLOCKED = (
    "pydantic", "pydantic_settings", "yaml", "faust", "mode", "sklearn", "lightgbm",
    "onnxmltools", "skl2onnx", "pyarrow", "click", "rich", "confluent_kafka", "chdb",
    "clickhouse_connect", "feast", "models", "orjson",
)  # fmt: skip
ALLOWED_STREAMS = {
    "streams", "streams.errors", "streams.scoring", "streams.scoring.placement",
    "streams.scoring.providers", "streams.scoring.cuda_kernels",
}  # fmt: skip
BLOCKER = f"""
import importlib.abc, runpy, sys
BLOCKED = {BLOCKED!r}
ALLOWED = {sorted(ALLOWED_STREAMS)!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or (name.startswith("streams.") and name not in ALLOWED):
            raise ImportError(f"{{name}} is refused: the device machine has no such package")
        return None
sys.meta_path.insert(0, Refuse())
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


@pytest.fixture()
def fake(tmp_path: Path) -> tuple[Path, bytes]:
    """A check folder holding a 250 kB fake wheel cut into 100 kB parts, and its bytes."""
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    data = np.random.default_rng(0).bytes(250_000)
    wheel.write_bytes(data)
    folder = tmp_path / "check"
    sums = {f"wheels/{wheel.name}": gpu_check.sha256_file(wheel)}
    for part in gpu_check.split_file(wheel, folder / "parts", 100_000):
        sums[f"parts/{part.name}"] = gpu_check.sha256_file(part)
    gpu_check.write_sums(folder, sums)
    return folder, data


def test_parts_reassemble_to_the_wheel(fake: tuple[Path, bytes], tmp_path: Path) -> None:
    folder, data = fake
    parts = gpu_check.part_names(gpu_check.read_sums(folder))
    assert [len((folder / p).read_bytes()) for p in parts] == [100_000, 100_000, 50_000]
    for index in range(len(parts)):
        status = gpu_check.check_part(folder, index)
        assert status["ok"] and status["intact"] == 3 and status["of"] == 3
    (wheel,) = gpu_check.assemble(folder, tmp_path / "out")
    assert wheel.read_bytes() == data


def test_a_damaged_or_missing_part_is_named(fake: tuple[Path, bytes], tmp_path: Path) -> None:
    folder, _ = fake
    parts = gpu_check.part_names(gpu_check.read_sums(folder))
    damaged = folder / parts[1]
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    status = gpu_check.check_part(folder, 1)
    assert not status["ok"] and status["damaged"] == [parts[1]]
    with pytest.raises(gpu_check.CheckError, match="damaged"):
        gpu_check.assemble(folder, tmp_path / "out")
    damaged.unlink()
    assert gpu_check.check_part(folder, 1)["missing"] == [parts[1]]
    with pytest.raises(gpu_check.CheckError, match=r"carry it first \(`gpu_check.sh receive 1`\)"):
        gpu_check.assemble(folder, tmp_path / "out")
    with pytest.raises(gpu_check.CheckError, match="lists 3 parts"):
        gpu_check.check_part(folder, 7)


def test_the_calls_fit_the_device_limit() -> None:
    tree, data = 2_000_000, 6_000_000
    part = gpu_check.default_part_bytes(tree, data)
    assert tree + data + part + gpu_check.MARGIN == gpu_check.CALL_LIMIT
    parts = -(-255_000_000 // part)  # the onnxruntime-gpu wheel
    assert parts == 5
    with pytest.raises(gpu_check.CheckError, match="no room for a part"):
        gpu_check.default_part_bytes(60 * 2**20, 4 * 2**20)
    folder = ROOT / ".gpu_check"
    sums = {f"parts/w.whl.part{i:02d}": "0" * 64 for i in range(parts)}
    calls = gpu_check.plan_calls(folder, sums)
    assert [c["command"] for c in calls] == [
        *(f"bash benchmarks/gpu_check.sh receive {i}" for i in range(parts - 1)),
        "bash benchmarks/gpu_check.sh run",
    ]
    assert calls[0]["carry"] == [".gpu_check/SHA256SUMS", ".gpu_check/parts/w.whl.part00"]
    assert calls[-1]["carry"] == [
        ".gpu_check/SHA256SUMS", ".gpu_check/data", ".gpu_check/parts/w.whl.part04"
    ]  # fmt: skip
    assert all(len(c["carry"]) <= 8 for c in calls)


def test_the_gitignore_keeps_the_check_folder_out_of_the_tree() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", ".gpu_check/parts/x.part00"], cwd=ROOT, capture_output=True
    )
    assert ignored.returncode == 0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``prepare --small`` with a fake wheel (no download)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    wheel = tmp / "fake-1.0-py3-none-any.whl"
    wheel.write_bytes(np.random.default_rng(1).bytes(150_000))
    folder = tmp / "check"
    env = {**os.environ, "STREAMSCORE_GPU_CHECK_DIR": str(folder), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SCRIPT), "prepare", "--small", "--wheel", str(wheel), "--part-bytes", "60000"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3. run(command='bash benchmarks/gpu_check.sh run'" in done.stdout
    return folder


def _blocked_python(tmp: Path) -> Path:
    """An interpreter for the script that refuses what the device's Python lacks."""
    blocker = tmp / "blocked.py"
    blocker.write_text(BLOCKER)
    wrapper = tmp / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{blocker}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_prepare_writes_models_holdout_references_and_sums(prepared: Path) -> None:
    sums = gpu_check.read_sums(prepared)
    variants = json.loads((prepared / "data" / "variants.json").read_text())
    names = [v["name"] for v in variants]
    assert {"lightgbm", "mlp"} == {v["kind"] for v in variants}
    assert all(f"data/{v['model']}" in sums for v in variants)
    assert len(gpu_check.part_names(sums)) == 3
    plan = json.loads((prepared / "plan.json").read_text())
    assert plan["variants"] == names and len(plan["calls"]) == 3
    gpu_check.check_data(prepared)  # every data file matches its sha256


def test_receive_and_run_cpu_only_with_the_device_imports(prepared: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STREAMSCORE_GPU_CHECK_DIR": str(prepared),
        "PYTHON": str(_blocked_python(tmp_path)),
        "OUT": str(tmp_path / "out"),
    }
    received = subprocess.run(
        ["bash", str(SCRIPT), "receive", "2"], env=env, capture_output=True, text=True, timeout=120
    )
    assert received.returncode == 0, received.stderr
    assert "arrived intact; 3 of 3 parts intact here" in received.stdout
    done = subprocess.run(
        ["bash", str(SCRIPT), "run", "--cpu-only", "--seconds", "0.01", "--batch-sizes", "64,256"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "CUDA provider unavailable: --cpu-only" in done.stdout
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["cuda_ok"] is False and report["failures"] == []
    assert set(report["imported_streams_modules"]) <= ALLOWED_STREAMS
    by_name = {v["name"]: v for v in report["variants"]}
    assert {"lightgbm-trees", "mlp-default"} <= set(by_name)
    for name, variant in by_name.items():
        cpu = variant["placement"]["cpu"]
        assert cpu["providers"] == ["CPUExecutionProvider"] and cpu["nodes_by_provider"]
        assert set(cpu["nodes_by_provider"]) == {"CPUExecutionProvider"}
        assert variant["parity"]["cpu_vs_native"] < 1e-5, name
        assert "cuda" not in variant["placement"] and "cpu_vs_cuda" not in variant["parity"]
        assert [r["batch"] for r in variant["crossover"]] == [64, 256]
        assert all(r["cpu_rows_per_s"] > 0 for r in variant["crossover"])
        assert f"{name:24s} cpu  session: CPUExecutionProvider" in done.stdout
    assert by_name["lightgbm-trees"]["placement"]["cpu"]["without_cuda_kernel"] == [
        "ai.onnx.ml:TreeEnsembleClassifier"
    ]
    if "lightgbm-tensor" in by_name:
        assert by_name["lightgbm-tensor"]["placement"]["cpu"]["cuda_capable"] is True


def test_run_without_cpu_only_fails_clearly_here(prepared: Path, tmp_path: Path) -> None:
    """This machine has no CUDA driver: the check must say so and exit non-zero."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dir", str(prepared),
         "run", "--out", str(tmp_path), "--seconds", "0.01", "--batch-sizes", "64"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert "CUDA provider unavailable: " in done.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["cuda_ok"] is False and report["cuda_unavailable"]
    assert all("cpu" in v["placement"] for v in report["variants"])


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("gcc", "nm", "readelf")), reason="needs gcc, nm, readelf"
)
def test_the_cuda_kernel_table_is_the_installed_build() -> None:
    """streams/scoring/cuda_kernels.py is what the pinned onnxruntime-gpu registers."""
    assert ort.__version__ == SOURCE_VERSION, (
        f"onnxruntime {ort.__version__} is installed, the table is of {SOURCE_VERSION}: "
        "regenerate it with `benchmarks/gpu_check.sh kernels --stub-cuda`"
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "kernels", "--stub-cuda"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    shipped = (ROOT / "streams" / "scoring" / "cuda_kernels.py").read_text()
    assert done.stdout == shipped
    assert ("", "MatMul") in CUDA_KERNELS and (
        "ai.onnx.ml",
        "TreeEnsembleClassifier",
    ) not in CUDA_KERNELS
