"""Where ONNX Runtime runs each node of a session, and whether a graph could run on CUDA.

A session's ``get_providers()`` lists the providers it registered, not where the nodes
went: the LightGBM export is one ``ai.onnx.ml`` TreeEnsembleClassifier, which ONNX
Runtime implements on CPU only, so a CUDA session runs the whole model on CPU while
``get_providers()[0]`` says CUDA. A :class:`Placement` is read from ONNX Runtime's own
session profile instead (``SessionOptions.enable_profiling``: every node run is an event
naming its provider and duration), which works the same on a CPU and a GPU build.

Guarantees: :class:`Profiling` profiles only the runs between session creation and
:meth:`Profiling.finish` (``end_profiling`` turns the profiler off), and leaves no file
behind: the profile lives in a private temporary folder, removed when it is read, or
when the probe is dropped (a failed load) or the process exits. ``cuda_capable`` is
decided from the graph alone, without a GPU, against the CUDA provider's kernel
registry of the ONNX Runtime build in constraints.txt (:mod:`streams.scoring.cuda_kernels`).

Imports stay light (no onnxruntime at import time, onnx only when a graph is read), so
``benchmarks/gpu_check.py`` can use this module on a machine without streamscore's
dependencies.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from streams.errors import ModelError
from streams.scoring.cuda_kernels import CUDA_KERNELS, SOURCE_VERSION
from streams.scoring.providers import CPU, GPU_PROVIDERS

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

__all__ = [
    "COPY_OPS",
    "NodeRun",
    "OpType",
    "Placement",
    "Profiles",
    "Profiling",
    "cuda_kernel_gaps",
    "graph_op_types",
    "node_runs",
    "placement_of",
    "read_profile",
    "short_provider",
]

# Nodes ONNX Runtime inserts to move tensors between devices: data movement, not compute.
COPY_OPS = frozenset({"MemcpyFromHost", "MemcpyToHost"})
_KERNEL_SUFFIX = "_kernel_time"


class OpType(NamedTuple):
    """One operator type of a graph: its domain ("" is ai.onnx) and the opset version of
    its schema (the ``since_version`` ONNX Runtime matches kernels on)."""

    domain: str
    op_type: str
    since_version: int

    def __str__(self) -> str:
        return f"{self.domain or 'ai.onnx'}:{self.op_type}"


class NodeRun(NamedTuple):
    """One node of an optimised session graph, summed over the profiled runs."""

    name: str
    op_type: str
    provider: str
    dur_us: int


def short_provider(provider: str) -> str:
    """``CUDAExecutionProvider`` → ``CUDA``."""
    return provider.removesuffix("ExecutionProvider")


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True, eq=False)
class Placement:
    """Where one session's compute nodes ran, and whether its graph could run on CUDA.

    ``nodes_by_provider`` counts the compute nodes of the optimised graph per provider
    (the Memcpy nodes ONNX Runtime adds between devices are counted in ``copies``);
    ``share_by_provider`` is each provider's share of the profiled node time (host-side
    time: a CUDA node's is its launch, not its kernel; by node count when every duration
    was 0 µs). ``cuda_capable``: every operator type of the graph has a CUDA kernel in
    ONNX Runtime ``SOURCE_VERSION`` (``without_cuda_kernel`` lists those that lack one).
    """

    providers: tuple[str, ...]  # session.get_providers(): registered, best first
    nodes_by_provider: Mapping[str, int] = field(default_factory=dict)
    share_by_provider: Mapping[str, float] = field(default_factory=dict)
    copies: int = 0
    without_cuda_kernel: tuple[OpType, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes_by_provider", _frozen(self.nodes_by_provider))
        object.__setattr__(self, "share_by_provider", _frozen(self.share_by_provider))

    @property
    def cuda_capable(self) -> bool:
        return not self.without_cuda_kernel

    @property
    def compute_nodes(self) -> int:
        return sum(self.nodes_by_provider.values())

    @property
    def primary(self) -> str:
        """The most preferred registered provider that runs nodes (the first registered
        one when the profile named no node)."""
        for provider in self.providers:
            if self.nodes_by_provider.get(provider):
                return provider
        if self.nodes_by_provider:  # a provider the session did not list (not seen so far)
            return max(self.nodes_by_provider, key=lambda p: self.nodes_by_provider[p])
        return self.providers[0] if self.providers else CPU

    @property
    def partial(self) -> bool:
        """Some compute nodes run on another provider than :attr:`primary`."""
        return self.nodes_by_provider.get(self.primary, 0) < self.compute_nodes

    @property
    def on_gpu(self) -> bool:
        """At least one compute node runs on a GPU provider."""
        return any(self.nodes_by_provider.get(p) for p in GPU_PROVIDERS)

    @property
    def provider(self) -> str:
        """What runs the model, truthfully: ``CUDAExecutionProvider`` only when every
        compute node is on CUDA; ``CUDAExecutionProvider (partial: 3 of 12 nodes on CPU)``
        when some are not; the first registered provider with "(placement not measured)"
        when the profile named no node."""
        primary = self.primary
        if not self.nodes_by_provider:
            return f"{primary} (placement not measured)"
        total = self.compute_nodes
        others = [
            f"{n} of {total} nodes on {short_provider(p)}"
            for p, n in sorted(self.nodes_by_provider.items(), key=lambda kv: (-kv[1], kv[0]))
            if p != primary and n
        ]
        return f"{primary} (partial: {', '.join(others)})" if others else primary

    def describe(self) -> str:
        """One clause for a log line: nodes per provider, and the CUDA kernels missing."""
        nodes = ", ".join(
            f"{n} on {short_provider(p)}" for p, n in sorted(self.nodes_by_provider.items())
        )
        text = f"{self.compute_nodes} compute nodes ({nodes or 'none profiled'})"
        if self.without_cuda_kernel:
            text += "; no CUDA kernel for " + ", ".join(str(o) for o in self.without_cuda_kernel)
        return text

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``streamscore model verify --placement --json`` prints."""
        return {
            "provider": self.provider,
            "providers": list(self.providers),
            "nodes_by_provider": dict(sorted(self.nodes_by_provider.items())),
            "compute_share_by_provider": {
                p: round(s, 4) for p, s in sorted(self.share_by_provider.items())
            },
            "copies": self.copies,
            "cuda_capable": self.cuda_capable,
            "without_cuda_kernel": [str(o) for o in self.without_cuda_kernel],
            "cuda_kernels_of": f"onnxruntime {SOURCE_VERSION}",
        }


# -- the session profile -------------------------------------------------------------------


def node_runs(events: Iterable[Mapping[str, Any]]) -> tuple[NodeRun, ...]:
    """Each node's provider and total duration from ONNX Runtime profile events (the JSON
    array ``end_profiling`` writes). A node run is a ``cat: "Node"`` event named
    ``<node>_kernel_time`` whose ``args`` carry ``provider`` and ``op_name``; fence and
    session events are skipped. Nodes keep their first-run order."""
    runs: dict[str, NodeRun] = {}
    for event in events:
        if event.get("cat") != "Node":
            continue
        name = str(event.get("name", ""))
        args = event.get("args")
        if not name.endswith(_KERNEL_SUFFIX) or not isinstance(args, Mapping):
            continue
        provider = args.get("provider")
        if not provider:
            continue
        node = name.removesuffix(_KERNEL_SUFFIX)
        dur = int(event.get("dur", 0) or 0)
        seen = runs.get(node)
        if seen is None:
            runs[node] = NodeRun(node, str(args.get("op_name", "")), str(provider), dur)
        else:
            runs[node] = seen._replace(dur_us=seen.dur_us + dur)
    return tuple(runs.values())


def placement_of(
    runs: Sequence[NodeRun],
    providers: Sequence[str],
    without_cuda_kernel: Sequence[OpType] = (),
) -> Placement:
    """The :class:`Placement` of a session from its node runs (pure)."""
    nodes: dict[str, int] = {}
    time: dict[str, int] = {}
    copies = 0
    for run in runs:
        if run.op_type in COPY_OPS:
            copies += 1
            continue
        nodes[run.provider] = nodes.get(run.provider, 0) + 1
        time[run.provider] = time.get(run.provider, 0) + max(run.dur_us, 0)
    weights = time if sum(time.values()) > 0 else nodes
    total = sum(weights.values())
    shares = {p: w / total for p, w in weights.items()} if total else {}
    return Placement(tuple(providers), nodes, shares, copies, tuple(without_cuda_kernel))


def read_profile(path: str | Path) -> list[dict[str, Any]]:
    """The events of one profile file (a JSON array); a ModelError if it is not one."""
    try:
        events = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"ONNX Runtime profile {path} cannot be read: {exc}") from exc
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise ModelError(f"ONNX Runtime profile {path} is not a JSON array of events")
    return events


class Profiling:
    """Turns profiling on in ``options`` for a session's first runs; :meth:`finish` reads
    the :class:`Placement` and removes the file.

    Use: ``probe = Profiling(options)``, build the session with ``options``, run it (a
    warm-up), then ``probe.finish(session, model_bytes)``. The profile is written into a
    folder of its own, removed by ``finish``, :meth:`close`, or when the probe is garbage
    collected (a session that failed to build or warm up) or the process exits.
    """

    def __init__(self, options: ort.SessionOptions) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="streamscore-profile-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
        options.enable_profiling = True
        options.profile_file_prefix = str(self.folder / "placement")

    def close(self) -> None:
        """Remove the profile folder now (idempotent)."""
        self._cleanup()

    def finish(self, session: ort.InferenceSession, model: bytes | onnx.ModelProto) -> Placement:
        """End the session's profiling (later runs are not profiled) and return where its
        nodes ran; ``model`` is the graph it was built from (for ``cuda_capable``)."""
        try:
            path = session.end_profiling()
            events = read_profile(path) if path else []
        finally:
            self.close()
        return placement_of(node_runs(events), session.get_providers(), cuda_kernel_gaps(model))


class Profiles:
    """:class:`Profiling` for every session built from the options :meth:`options` makes
    (a Scorer may build a GPU session, a CPU one for small batches, and reopen one).

    :meth:`finish` reads one session's Placement, ends the profiling of the others given,
    and removes every profile folder; sessions dropped before it ended write into their
    own folder, removed with the rest.
    """

    def __init__(self) -> None:
        self._probes: list[Profiling] = []

    def options(self, make: Callable[[], ort.SessionOptions]) -> Callable[[], ort.SessionOptions]:
        """``make``, with profiling turned on in each options object it returns."""

        def profiled() -> ort.SessionOptions:
            options = make()
            self._probes.append(Profiling(options))
            return options

        return profiled

    def close(self) -> None:
        for probe in self._probes:
            probe.close()

    def finish(
        self,
        session: ort.InferenceSession,
        model: bytes | onnx.ModelProto,
        also: Iterable[ort.InferenceSession | None] = (),
    ) -> Placement:
        """Where ``session`` (built from ``model``) ran its nodes; profiling of ``session``
        and of each of ``also`` ends here."""
        try:
            path = session.end_profiling()
            for other in also:
                if other is not None:
                    other.end_profiling()
            events = read_profile(path) if path else []
        finally:
            self.close()
        return placement_of(node_runs(events), session.get_providers(), cuda_kernel_gaps(model))


# -- which operator types the CUDA provider implements --------------------------------------


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def graph_op_types(model: bytes | onnx.ModelProto) -> tuple[OpType, ...]:
    """Every operator type of ``model``'s graph and its subgraphs (If, Loop, Scan bodies),
    with the schema version the model's opset imports resolve it to, sorted."""
    import onnx

    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else model
    opsets = {_domain(o.domain): int(o.version) for o in proto.opset_import}
    found: set[OpType] = set()
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            domain = _domain(node.domain)
            found.add(OpType(domain, node.op_type, _since(node.op_type, domain, opsets)))
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return tuple(sorted(found))


def _since(op_type: str, domain: str, opsets: Mapping[str, int]) -> int:
    """The ``since_version`` of the schema ``op_type`` resolves to under ``opsets``; the
    opset itself when onnx does not know the operator (com.microsoft contrib ops)."""
    import onnx.defs

    opset = opsets.get(domain, 1)
    try:
        return int(onnx.defs.get_schema(op_type, opset, domain).since_version)
    except onnx.defs.SchemaError:
        return opset


def cuda_kernel_gaps(model: bytes | onnx.ModelProto) -> tuple[OpType, ...]:
    """The operator types of ``model`` the CUDA provider has no kernel for (none: the
    graph is ``cuda_capable``). Matched on domain, type and opset version; element types
    are not checked (the profile of a CUDA session says the rest)."""
    return tuple(op for op in graph_op_types(model) if not _has_cuda_kernel(op))


def _has_cuda_kernel(op: OpType) -> bool:
    spans = CUDA_KERNELS.get((op.domain, op.op_type), ())
    return any(
        lo <= op.since_version and (hi is None or op.since_version <= hi) for lo, hi in spans
    )
