"""GPU check: where every model variant runs, CPU/CUDA parity and the crossover batch size,
on the device machine, with ``onnxruntime-gpu`` carried there as wheel parts.

The device machine has Python 3.12, the CUDA 13 libraries and a CPU build of onnxruntime,
cannot reach the internet, and takes at most 64 MiB (working tree + carried paths) per
call; the ``onnxruntime-gpu`` wheel is about 255 MB. So (``benchmarks/gpu_check.sh`` wraps
each step):

``prepare`` (here)
    downloads the cp312 manylinux x86-64 wheel, splits it into parts that fit one call
    each next to the measured working tree, builds the test models (every variant of the
    LightGBM and MLP models, trained with the project's code), a holdout and the native
    models' reference probabilities, writes ``SHA256SUMS``, and prints the device calls.
``receive N`` (device)
    checks that part N arrived intact and lists the parts present: a cheap call.
``assemble`` (device)
    joins the parts into the wheel(s) and checks every sha256.
``run`` (device; ``--cpu-only`` anywhere)
    asserts the CUDA provider really initialises (``get_providers()[0]`` is CUDA and the
    session profile puts every node of a MatMul probe on CUDA), then per variant: the
    placement on CPU and on CUDA, parity CPU vs CUDA and vs the native reference, and
    rows/s by batch size on both (the crossover); JSON to ``$OUT/gpu_check.json``.
``kernels`` (here)
    prints ``streams/scoring/cuda_kernels.py`` from the installed onnxruntime-gpu build's
    kernel registry (``--stub-cuda`` on a machine without the CUDA libraries).

``run``, ``receive`` and ``assemble`` import the standard library, numpy, onnx and
onnxruntime only, plus four light streams modules (errors, and placement, providers and
cuda_kernels from streams.scoring, loaded without ``streams/scoring/__init__.py``, which
would import pydantic, yaml and the whole scorer). ``prepare`` uses the project's
training code and needs the dev environment.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / ".gpu_check"
WHEEL = "onnxruntime-gpu"
WHEEL_VERSION = "1.31.1"  # constraints.txt
DEVICE_PYTHON = "3.12"
# Newest first: pip matches a manylinux tag exactly.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")  # fmt: skip
CALL_LIMIT = 64 * 2**20  # working tree + carried paths, per device call
MARGIN = 3 * 2**20  # files other engineers add to the tree between prepare and the calls
SUMS = "SHA256SUMS"
BATCH_SIZES = (64, 256, 1024, 4096, 16384)
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Loaded by full path from the nvidia-* wheels, dependencies first, before the provider
# library asks for them by name (onnxruntime-gpu built for CUDA 13).
CUDA_LIBRARIES = ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10",
                  "libcufft.so.12", "libnvrtc.so.13", "libcudnn.so.9")  # fmt: skip
UNAVAILABLE = "CUDA provider unavailable"


class CheckError(Exception):
    """A step cannot go on; the message says what is missing and what to do."""


# -- light imports -------------------------------------------------------------------------


def streams_module(name: str) -> Any:
    """``streams.scoring.<name>`` without running ``streams/scoring/__init__.py``.

    That package's ``__init__`` imports the registry (pydantic, yaml) and the scorer, which
    the device machine's Python lacks; placement, providers and cuda_kernels import only
    ``streams.errors`` and the standard library. When the real package is already imported
    (here, in ``prepare``), it is used as it is.
    """
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    if "streams.scoring" not in sys.modules:
        package = types.ModuleType("streams.scoring")
        package.__path__ = [str(ROOT / "streams" / "scoring")]
        sys.modules["streams.scoring"] = package
    return importlib.import_module(f"streams.scoring.{name}")


# -- sha256 sums and parts ------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_sums(folder: Path) -> dict[str, str]:
    """``relative path → sha256`` from ``folder/SHA256SUMS`` (the ``sha256sum`` format)."""
    path = folder / SUMS
    if not path.is_file():
        raise CheckError(f"{path} is missing: carry it with every call (prepare writes it)")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise CheckError(f"{path} line {number} is not '<sha256>  <path>': {line!r}")
        sums[name] = digest
    return sums


def write_sums(folder: Path, sums: dict[str, str]) -> None:
    lines = [f"{digest}  {name}" for name, digest in sorted(sums.items())]
    (folder / SUMS).write_text("\n".join(lines) + "\n")


def part_names(sums: dict[str, str]) -> list[str]:
    """Every part, in carrying order (wheel by wheel, part by part)."""
    return sorted(n for n in sums if n.startswith("parts/"))


def split_file(source: Path, parts_dir: Path, part_bytes: int) -> list[Path]:
    """``source`` cut into ``<name>.partNN`` files of at most ``part_bytes`` each."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with open(source, "rb") as f:
        index = 0
        while chunk := f.read(part_bytes):
            part = parts_dir / f"{source.name}.part{index:02d}"
            part.write_bytes(chunk)
            written.append(part)
            index += 1
    return written


def check_part(folder: Path, index: int) -> dict[str, Any]:
    """Whether part ``index`` arrived intact, and which parts are there so far."""
    sums = read_sums(folder)
    parts = part_names(sums)
    if not 0 <= index < len(parts):
        raise CheckError(f"part {index} does not exist: {SUMS} lists {len(parts)} parts")
    present = [name for name in parts if (folder / name).is_file()]
    intact = [name for name in present if sha256_file(folder / name) == sums[name]]
    name = parts[index]
    return {
        "part": index,
        "file": name,
        "ok": name in intact,
        "present": len(present),
        "intact": len(intact),
        "of": len(parts),
        "missing": [n for n in parts if n not in present],
        "damaged": [n for n in present if n not in intact],
    }


def assemble(folder: Path, target: Path) -> list[Path]:
    """Join every wheel's parts into ``target``; each part and each whole file must match
    its sha256. Returns the wheels written."""
    sums = read_sums(folder)
    wheels = sorted(n for n in sums if n.startswith("wheels/"))
    if not wheels:
        raise CheckError(f"{folder / SUMS} names no wheel: prepare ran with --no-wheel")
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    parts = part_names(sums)
    for wheel in wheels:
        base = wheel.removeprefix("wheels/")
        mine = [p for p in parts if p.startswith(f"parts/{base}.part")]
        out = target / base
        digest = hashlib.sha256()
        with open(out, "wb") as sink:
            for name in mine:
                path = folder / name
                if not path.is_file():
                    raise CheckError(
                        f"{name} (part {parts.index(name)} of {len(parts)}) is missing here: "
                        f"carry it first (`gpu_check.sh receive {parts.index(name)}`)"
                    )
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != sums[name]:
                    raise CheckError(
                        f"{name} is damaged (sha256 differs from {SUMS}): carry it again"
                    )
                digest.update(data)
                sink.write(data)
        if digest.hexdigest() != sums[wheel]:
            out.unlink()
            raise CheckError(f"{base} reassembled from {len(mine)} parts does not match its sha256")
        written.append(out)
    return written


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the working tree a device call sends: tracked and untracked-not-ignored
    files (``git ls-files --cached --others --exclude-standard``)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout  # fmt: skip
    total = 0
    for name in listed.split(b"\0"):
        path = root / os.fsdecode(name)
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def default_part_bytes(tree: int, data: int, limit: int = CALL_LIMIT) -> int:
    """The largest part that travels in one call beside the tree, the models (carried
    with the last part) and a margin for files added to the tree before the calls."""
    part = limit - tree - data - MARGIN
    if part < 2**20:
        raise CheckError(
            f"no room for a part: the tree is {tree:,} bytes and the models {data:,}, "
            f"of {limit:,} per call; make the models smaller (--small) or the tree lighter"
        )
    return part


# -- prepare (here) -------------------------------------------------------------------------


def download_wheel(dest: Path, requirement: str) -> tuple[Path, str]:
    """The cp312 manylinux x86-64 wheel of ``requirement`` in ``dest``, and a note when the
    pinned version was not there and the newest was taken instead."""
    dest.mkdir(parents=True, exist_ok=True)

    def fetch(spec: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--python-version", DEVICE_PYTHON, "--implementation", "cp",
                   "-d", str(dest)]  # fmt: skip
        for platform in PLATFORMS:
            command += ["--platform", platform]
        return subprocess.run([*command, spec], capture_output=True, text=True)

    before = set(dest.glob("*.whl"))
    note = ""
    done = fetch(requirement)
    if done.returncode != 0 and "==" in requirement:
        name = requirement.split("==", 1)[0]
        done = fetch(name)
        note = f"{requirement} is not on the index for cp312 manylinux x86-64; took the newest"
    if done.returncode != 0:
        raise CheckError(f"pip download {requirement} failed:\n{done.stderr.strip()[-2000:]}")
    found = sorted(set(dest.glob("*.whl")) - before) or sorted(
        dest.glob(requirement.split("==")[0].replace("-", "_") + "-*.whl")
    )
    if not found:
        raise CheckError(f"pip download {requirement} wrote no wheel into {dest}")
    return found[-1], (f"{note}: {found[-1].name}" if note else "")


def _variants(onnx_path: Path) -> list[tuple[str, bytes]]:
    """Every variant of one trained artifact (models.export.artifact_variants, once the
    models package has it; the single .onnx before)."""
    try:
        from models.export import artifact_variants
    except ImportError:
        return [("default", onnx_path.read_bytes())]
    return [(str(v), bytes(b)) for v, b in artifact_variants(onnx_path)]


def build_models(data: Path, *, small: bool, seed: int = 0) -> list[dict[str, Any]]:
    """Train the LightGBM and MLP models on synthetic data with the project's code and
    write each variant's ONNX, a holdout and the native models' reference probabilities."""
    import numpy as np

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from streams.scoring.training import import_training_package

    models = import_training_package(ROOT / "models")
    from models.train import feature_matrix

    n_features, rows, holdout_rows = (10, 2000, 256) if small else (120, 20_000, 4096)
    kinds: dict[str, dict[str, Any]] = {
        "lightgbm": {"n_estimators": 20 if small else 200},
        "mlp": {"hidden_layers": (16, 8) if small else (64, 32), "max_iter": 5 if small else 8},
    }
    spec = models.synthetic_feature_service(n_features)
    holdout = feature_matrix(
        models.synthetic_training_table(spec, holdout_rows, seed=seed + 1), spec
    )
    data.mkdir(parents=True, exist_ok=True)
    np.save(data / "holdout.npy", holdout)
    written: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="streamscore-gpu-check-") as tmp:
        for kind, config in kinds.items():
            trained = models.train_synthetic(
                Path(tmp), kind, spec=spec, rows=rows, seed=seed, **config
            )
            reference = trained.model.predict_proba(holdout)[:, 1].astype(np.float64)
            np.save(data / f"reference-{kind}.npy", reference)
            for variant, model_bytes in _variants(trained.onnx_path):
                name = f"{kind}-{variant}"
                (data / f"{name}.onnx").write_bytes(model_bytes)
                written.append({"name": name, "kind": kind, "variant": variant,
                                "model": f"{name}.onnx", "reference": f"reference-{kind}.npy",
                                "n_features": n_features})  # fmt: skip
    (data / "variants.json").write_text(json.dumps(written, indent=2) + "\n")
    return written


def plan_calls(folder: Path, sums: dict[str, str], root: Path = ROOT) -> list[dict[str, Any]]:
    """The device calls, in order: one ``receive`` per part but the last, then ``run``
    carrying the last part with the models (the machine keeps what was carried while it is
    warm: 30 s idle and it goes back, and a later call starts bare)."""
    try:
        rel = folder.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = str(folder)  # outside the repo: nothing can be carried from there
    parts = part_names(sums)
    sums_path, data_path = f"{rel}/{SUMS}", f"{rel}/data"
    calls = [
        {"command": f"bash benchmarks/gpu_check.sh receive {i}",
         "carry": [sums_path, f"{rel}/{name}"], "timeout_s": 120}
        for i, name in enumerate(parts[:-1])
    ]  # fmt: skip
    last = [f"{rel}/{parts[-1]}"] if parts else []
    command = "bash benchmarks/gpu_check.sh run" + ("" if parts else " --cpu-only")
    calls.append({"command": command, "carry": [sums_path, data_path, *last], "timeout_s": 540})
    return calls


def prepare(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    import shutil

    for sub in ("parts", "data"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    wheels: list[Path] = []
    if args.wheel:
        wheels += [Path(w) for w in args.wheel]
    elif not args.no_wheel:
        wheel, note = download_wheel(folder / "wheels", f"{WHEEL}=={WHEEL_VERSION}")
        wheels.append(wheel)
        notes += [note] if note else []
    for extra in args.extra:
        wheels.append(download_wheel(folder / "wheels", extra)[0])
    variants = build_models(folder / "data", small=args.small)
    data_bytes = folder_bytes(folder / "data")
    tree = tree_bytes()
    part_bytes = args.part_bytes or default_part_bytes(tree, data_bytes)
    sums = {
        f"data/{p.relative_to(folder / 'data').as_posix()}": sha256_file(p)
        for p in sorted((folder / "data").rglob("*"))
        if p.is_file()
    }
    for wheel in wheels:
        sums[f"wheels/{wheel.name}"] = sha256_file(wheel)
        for part in split_file(wheel, folder / "parts", part_bytes):
            sums[f"parts/{part.name}"] = sha256_file(part)
    write_sums(folder, sums)
    calls = plan_calls(folder, sums)
    plan = {
        "tree_bytes": tree,
        "data_bytes": data_bytes,
        "part_bytes": part_bytes,
        "call_limit_bytes": CALL_LIMIT,
        "wheels": [w.name for w in wheels],
        "variants": [v["name"] for v in variants],
        "notes": notes,
        "calls": calls,
    }
    (folder / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    print(f"working tree {tree:,} B, models {data_bytes:,} B, parts of at most {part_bytes:,} B")
    for note in notes:
        print(f"note: {note}")
    print(f"variants: {', '.join(plan['variants'])}")
    print(
        f"device calls, back to back (the machine goes back after 30 s idle); {folder}/plan.json:"
    )
    for number, call in enumerate(calls, 1):
        print(f"{number}. run(command={call['command']!r}, carry={json.dumps(call['carry'])}, "
              f"timeout_s={call['timeout_s']})")  # fmt: skip
    return 0


# -- the device side ------------------------------------------------------------------------


def nvidia_lib_dirs() -> list[str]:
    """The ``lib`` folders of the nvidia-* wheels on this Python's path (CUDA 13 puts them
    together in nvidia/cu13/lib; cuDNN keeps nvidia/cudnn/lib)."""
    found: list[str] = []
    for entry in sys.path:
        base = Path(entry or ".") / "nvidia"
        if base.is_dir():
            found += [str(p) for p in sorted(base.glob("*/lib")) if p.is_dir()]
    return list(dict.fromkeys(found))


def preload_cuda(ort: Any) -> dict[str, Any]:
    """Load the CUDA libraries the CUDA provider links, from the nvidia wheels by full path
    first, then through ``onnxruntime.preload_dlls`` (its notes are kept, not printed)."""
    dirs = nvidia_lib_dirs()
    loaded: list[str] = []
    for name in CUDA_LIBRARIES:
        for folder in dirs:
            path = Path(folder) / name
            if path.is_file():
                with contextlib.suppress(OSError):
                    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                    loaded.append(str(path))
                break
    said = io.StringIO()
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(said), contextlib.suppress(Exception):
            ort.preload_dlls()
    return {"lib_dirs": dirs, "loaded": loaded, "preload_dlls_said": said.getvalue().strip()}


def matmul_probe() -> bytes:
    """A two-node float MatMul + Relu graph: every node has a CUDA kernel."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def open_profiled(
    ort: Any, model: bytes, providers: Sequence[str], threads: int, warm: Callable[[Any], Any]
) -> tuple[Any, Any, Any]:
    """A session on ``providers``, its Placement from one profiled ``warm(session)``, and
    what ``warm`` returned."""
    placement = streams_module("placement")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    probe = placement.Profiling(options)
    try:
        session = ort.InferenceSession(model, options, providers=list(providers))
        result = warm(session)
        return session, probe.finish(session, model), result
    finally:
        probe.close()


def driver_problem() -> str | None:
    """Why the CUDA driver cannot run anything here, or None."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA driver (libcuda.so.1 not found)"
    status = driver.cuInit(0)
    if status != 0:
        return f"the CUDA driver does not initialise (cuInit error {status})"
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "no CUDA device"
    return None


def cuda_status(ort: Any, threads: int) -> tuple[str | None, dict[str, Any]]:
    """None when the CUDA provider really runs nodes here, else why not."""
    import numpy as np

    info: dict[str, Any] = {"available_providers": list(ort.get_available_providers())}
    if CUDA not in info["available_providers"]:
        return f"this onnxruntime build ({_package(ort)}) has no {CUDA}", info
    problem = driver_problem()
    if problem:
        return problem, info
    info["preload"] = preload_cuda(ort)
    missing = []
    for name in CUDA_LIBRARIES[:3]:  # what the provider library links (readelf -d)
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(name)
    if missing:
        return f"CUDA libraries not found: {', '.join(missing)} (nvidia-* wheels?)", info
    x = np.ones((4, 8), dtype=np.float32)
    try:
        session, where, _ = open_profiled(
            ort, matmul_probe(), [CUDA, CPU], threads, lambda s: s.run(None, {"x": x})
        )
    except Exception as exc:  # onnxruntime raises its own types
        return f"a CUDA session could not be built: {exc}", info
    info["probe"] = where.to_dict()
    if session.get_providers()[0] != CUDA:
        return f"ONNX Runtime registered {session.get_providers()} (CUDA did not initialise)", info
    if where.primary != CUDA or where.partial:
        return f"CUDA is registered but the probe's nodes ran on {where.provider}", info
    return None, info


def _package(ort: Any) -> str:
    try:
        from onnxruntime.capi import build_and_package_info as build
    except ImportError:
        return f"onnxruntime {ort.__version__}"
    cuda = getattr(build, "cuda_version", "") or "none"
    return f"{build.package_name} {build.__version__}, CUDA {cuda}"


def rows_per_s(session: Any, feed: dict[str, Any], rows: int, seconds: float) -> float:
    """Rows per second of ``session.run`` on one batch, timed for ``seconds`` (>= 3 calls)."""
    session.run(None, feed)  # warm this shape
    calls, start = 0, time.perf_counter()
    while True:
        session.run(None, feed)
        calls += 1
        spent = time.perf_counter() - start
        if spent >= seconds and calls >= 3:
            return rows * calls / spent


def _scores(session: Any, x: Any) -> Any:
    import numpy as np

    names = [o.name for o in session.get_outputs()]
    output = "score" if "score" in names else names[0]
    out = session.run([output], {session.get_inputs()[0].name: x})[0]
    return np.asarray(out, dtype=np.float64).reshape(len(x), -1)[:, -1]


def check_data(folder: Path) -> None:
    """Every carried data file matches SHA256SUMS."""
    sums = read_sums(folder)
    for name, digest in sums.items():
        if not name.startswith("data/"):
            continue
        path = folder / name
        if not path.is_file():
            raise CheckError(f"{name} is missing: carry {folder.name}/data with the run call")
        if sha256_file(path) != digest:
            raise CheckError(f"{name} is damaged (sha256 differs from {SUMS}): carry it again")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import onnxruntime as ort

    folder: Path = args.dir
    check_data(folder)
    data = folder / "data"
    ort.set_default_logger_severity(3)
    variants = json.loads((data / "variants.json").read_text())
    holdout = np.load(data / "holdout.npy")
    report: dict[str, Any] = {
        "onnxruntime": {"package": _package(ort), "file": ort.__file__},
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "holdout_rows": len(holdout),
    }
    if args.cpu_only:
        reason: str | None = "--cpu-only: CUDA not tried"
    else:
        reason, report["cuda"] = cuda_status(ort, args.threads)
    report["cuda_ok"] = reason is None
    report["cuda_unavailable"] = reason
    print(f"onnxruntime: {report['onnxruntime']['package']} ({ort.__file__})")
    print("CUDA provider: initialises, the probe's nodes all run on CUDA" if reason is None
          else f"{UNAVAILABLE}: {reason}")  # fmt: skip
    tolerance = {"cpu_vs_native": args.native_tolerance, "cpu_vs_cuda": args.cuda_tolerance}
    report["tolerance"] = tolerance
    providers = [[CPU]] + ([] if reason else [[CUDA, CPU]])
    failures: list[str] = []
    results: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    for variant in variants:
        model = (data / variant["model"]).read_bytes()
        reference = np.load(data / variant["reference"])
        entry: dict[str, Any] = {"name": variant["name"], "placement": {}, "parity": {}}
        scores: dict[str, Any] = {}
        sessions: dict[str, Any] = {}
        for chain in providers:
            label = "cuda" if chain[0] == CUDA else "cpu"
            session, where, scores[label] = open_profiled(
                ort, model, chain, args.threads, lambda s: _scores(s, holdout)
            )
            sessions[label] = session
            entry["placement"][label] = where.to_dict()
            print(f"{variant['name']:24s} {label:4s} session: {where.provider}; {where.describe()}")
        entry["parity"]["cpu_vs_native"] = float(np.abs(scores["cpu"] - reference).max())
        if "cuda" in scores:
            entry["parity"]["cpu_vs_cuda"] = float(np.abs(scores["cpu"] - scores["cuda"]).max())
            entry["parity"]["cuda_vs_native"] = float(np.abs(scores["cuda"] - reference).max())
        for key, limit in tolerance.items():
            if key in entry["parity"] and entry["parity"][key] > limit:
                failures.append(f"{variant['name']}: {key} {entry['parity'][key]:.3g} > {limit:g}")
        print(f"{variant['name']:24s} parity (max |diff|): "
              + ", ".join(f"{k} {v:.3g}" for k, v in entry["parity"].items()))  # fmt: skip
        timings: list[dict[str, Any]] = []
        name = sessions["cpu"].get_inputs()[0].name
        for batch in sizes:
            x = rng.normal(size=(batch, variant["n_features"])).astype(np.float32)
            row: dict[str, Any] = {"batch": batch}
            for label, session in sessions.items():
                row[f"{label}_rows_per_s"] = rows_per_s(session, {name: x}, batch, args.seconds)
            timings.append(row)
        entry["crossover"] = timings
        wins = [r["batch"] for r in timings if r.get("cuda_rows_per_s", 0) >= r["cpu_rows_per_s"]]
        entry["gpu_wins_from_batch"] = wins[0] if wins else None
        results.append(entry)
    report["variants"] = results
    report["failures"] = failures
    _print_crossover(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report["imported_streams_modules"] = sorted(m for m in sys.modules if m.startswith("streams"))
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'gpu_check.json'}")
    for failure in failures:
        print(f"FAIL parity {failure}")
    if reason is not None and not args.cpu_only:
        return 1
    return 1 if failures else 0


def _print_crossover(results: Sequence[dict[str, Any]]) -> None:
    print("rows/s by batch size (CPU | CUDA):")
    for entry in results:
        cells = []
        for row in entry["crossover"]:
            cuda = row.get("cuda_rows_per_s")
            cells.append(f"{row['batch']}: {row['cpu_rows_per_s']:,.0f}"
                         + (f" | {cuda:,.0f}" if cuda is not None else ""))  # fmt: skip
        wins = entry["gpu_wins_from_batch"]
        verdict = "" if "cuda" not in entry["placement"] else (
            f"; CUDA wins from batch {wins}" if wins else "; CUDA never wins")  # fmt: skip
        print(f"  {entry['name']}: " + "; ".join(cells) + verdict)


# -- the CUDA kernel table ------------------------------------------------------------------


def _undefined_symbols(library: Path) -> list[str]:
    listed = subprocess.run(["nm", "-D", "--undefined-only", str(library)], check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    return [
        f[1] for f in (line.split() for line in listed.splitlines()) if len(f) == 2 and f[0] == "U"
    ]


def _needed(library: Path) -> list[str]:
    listed = subprocess.run(["readelf", "-d", str(library)], check=True, capture_output=True,
                            text=True).stdout  # fmt: skip
    return [line.split("[", 1)[1].rstrip("]") for line in listed.splitlines() if "(NEEDED)" in line]


@contextlib.contextmanager
def cuda_stubs(capi: Path) -> Iterator[list[str]]:
    """Load stand-ins for the CUDA, cuDNN and TensorRT libraries the provider libraries
    link and this machine lacks, so the libraries load and their kernel registries can be
    read: every stub function returns 0 and none is called for a kernel's definition.
    Needs gcc, nm and readelf."""
    providers = sorted(capi.glob("libonnxruntime_providers_*.so"))
    providers = [p for p in providers if not p.name.endswith("_shared.so")]
    needed = sorted({n for p in providers for n in _needed(p)})
    missing = []
    for name in needed:
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(name)
    symbols = sorted({s for p in providers for s in _undefined_symbols(p)})
    unversioned = [s for s in symbols if "@" not in s and not s.startswith("Provider_")]
    with tempfile.TemporaryDirectory(prefix="streamscore-cuda-stubs-") as tmp:
        for lib in missing:
            mine = [s.split("@", 1)[0] for s in symbols if s.endswith(f"@{lib}")]
            names = sorted(set(mine) | set(unversioned))
            source = Path(tmp) / f"{lib}.c"
            source.write_text("".join(f"int {n}(void) {{ return 0; }}\n" for n in names))
            command = ["gcc", "-shared", "-fPIC", "-o", str(Path(tmp) / lib), str(source),
                       f"-Wl,-soname,{lib}"]  # fmt: skip
            if mine:  # the provider asks for these at version node <lib>
                script = Path(tmp) / f"{lib}.map"
                script.write_text(
                    f"{lib} {{ global: {' '.join(n + ';' for n in mine)} local: *; }};\n"
                )
                command.append(f"-Wl,--version-script={script}")
            subprocess.run(command, check=True)
            ctypes.CDLL(str(Path(tmp) / lib), mode=ctypes.RTLD_GLOBAL)
        yield missing


def kernel_spans(
    defs: Sequence[Any], provider: str = CUDA
) -> dict[tuple[str, str], list[tuple[int, int | None]]]:
    """``(domain, op) → opset spans`` of ``provider``'s kernel definitions (the objects
    ``get_all_opkernel_def`` returns), touching ranges merged; ai.onnx is "", the
    layout-internal domains are left out (no model carries them)."""
    ranges: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for d in defs:
        domain = "" if d.domain in ("", "ai.onnx") else d.domain
        if d.provider != provider or domain.startswith("com.ms.internal"):
            continue
        ranges.setdefault((domain, d.op_name), set()).add(tuple(d.version_range))
    spans: dict[tuple[str, str], list[tuple[int, int | None]]] = {}
    for key, found in sorted(ranges.items()):
        merged: list[list[int]] = []
        for lo, hi in sorted(found):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        spans[key] = [(lo, None if hi >= 2**31 - 1 else hi) for lo, hi in merged]
    return spans


def render_kernel_module(
    spans: dict[tuple[str, str], list[tuple[int, int | None]]], version: str
) -> str:
    lines = [
        f'"""The CUDA execution provider\'s kernels in ONNX Runtime {version}: which operator',
        "types (domain, type, opset versions) it implements.",
        "",
        f"Read from the onnxruntime-gpu {version} build itself (constraints.txt): its kernel",
        "registry, ``onnxruntime.capi._pybind_state.get_all_opkernel_def()``, is what",
        'tools/python/gen_opkernel_doc.py renders as docs/OperatorKernels.md ("Operators',
        'implemented by CUDAExecutionProvider"). Element types are not recorded. Generated by',
        "``benchmarks/gpu_check.sh kernels --stub-cuda`` (CUDA libraries stubbed so the",
        "provider library loads without a GPU); regenerate it when constraints.txt moves",
        "onnxruntime-gpu. Do not edit by hand.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        '__all__ = ["CUDA_KERNELS", "SOURCE_VERSION"]',
        "",
        f'SOURCE_VERSION = "{version}"',
        "",
        '# (domain: "" is ai.onnx, op type) → ((first opset, last opset or None), ...)',
        "CUDA_KERNELS: dict[tuple[str, str], tuple[tuple[int, int | None], ...]] = {",
    ]
    for (domain, op), found in spans.items():
        text = ", ".join(f"({lo}, {hi})" for lo, hi in found)
        lines.append(f'    ("{domain}", "{op}"): ({text}{"," if len(found) == 1 else ""}),')
    lines += ["}", ""]
    return "\n".join(lines)


def kernels(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    capi = Path(ort.__file__).parent / "capi"
    with cuda_stubs(capi) if args.stub_cuda else contextlib.nullcontext([]) as stubbed:
        from onnxruntime.capi import _pybind_state

        defs = _pybind_state.get_all_opkernel_def()
    spans = kernel_spans(defs)
    if not spans:
        raise CheckError(f"{_package(ort)} registered no {CUDA} kernel (a CPU build?)")
    if stubbed:
        print(f"stubbed: {', '.join(stubbed)}", file=sys.stderr)
    sys.stdout.write(render_kernel_module(spans, ort.__version__))
    return 0


# -- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("STREAMSCORE_GPU_CHECK_DIR", DEFAULT_DIR))
    )
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("prepare", help="here: wheel parts, models, sha256s, the device calls")
    p.add_argument("--no-wheel", action="store_true", help="no download (a CPU-only check)")
    p.add_argument(
        "--wheel", action="append", default=[], help="use this wheel file instead of downloading"
    )
    p.add_argument(
        "--extra", action="append", default=[], help="another wheel to carry, NAME==VERSION"
    )
    p.add_argument("--part-bytes", type=int, default=0, help="default: what fits one call")
    p.add_argument("--small", action="store_true", help="tiny models (tests)")
    r = steps.add_parser("receive", help="device: part N arrived intact?")
    r.add_argument("index", type=int)
    a = steps.add_parser("assemble", help="device: join and check the wheel parts")
    a.add_argument("--to", type=Path, required=True)
    steps.add_parser("libdirs", help="the nvidia-* wheels' lib folders, ':'-joined")
    u = steps.add_parser("run", help="device: placement, parity and crossover of every variant")
    u.add_argument("--out", default=os.environ.get("OUT") or "")
    u.add_argument("--cpu-only", action="store_true", help="do not try CUDA")
    u.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (the scorer's default: 1)"
    )
    u.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    u.add_argument("--seconds", type=float, default=0.4, help="timing per batch size and provider")
    u.add_argument("--native-tolerance", type=float, default=1e-5)
    u.add_argument("--cuda-tolerance", type=float, default=1e-4)
    k = steps.add_parser("kernels", help="here: print streams/scoring/cuda_kernels.py")
    k.add_argument("--stub-cuda", action="store_true", help="stand-ins for missing CUDA libraries")
    args = parser.parse_args(argv)
    try:
        if args.step == "prepare":
            return prepare(args)
        if args.step == "receive":
            status = check_part(args.dir, args.index)
            print(json.dumps(status))
            word = "arrived intact" if status["ok"] else "is MISSING or DAMAGED"
            print(f"part {status['part']} of {status['of']} ({status['file']}) {word}; "
                  f"{status['intact']} of {status['of']} parts intact here")  # fmt: skip
            return 0 if status["ok"] else 1
        if args.step == "assemble":
            for wheel in assemble(args.dir, args.to):
                print(f"assembled {wheel} (sha256 ok)")
            return 0
        if args.step == "libdirs":
            print(":".join(nvidia_lib_dirs()))
            return 0
        if args.step == "run":
            args.out = args.out or str(args.dir / "out")
            return run(args)
        return kernels(args)
    except CheckError as exc:
        print(f"gpu_check {args.step}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
