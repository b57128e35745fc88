"""GPU readiness, checked on the CPU: dtypes, host synchronisation, diffusers' memory features, and
the dry run of ``benchmarks/gpu_check.py``.

* **Accumulators** stay on the model's device in float32 whatever the model's dtype: a tiny
  CogVideoX pipeline converted to bfloat16 (``pipe.to(torch.bfloat16)``; the tiny models run in
  bfloat16 on the CPU) traces every registered analysis with float32 (or integer/bool) state on
  the model's device, and maps close to the float32 run's. A Wan transformer loaded as diffusers
  loads it in bfloat16 (``_keep_in_fp32_modules`` kept in float32, among them its first
  parameter) traces too (``Adapter.dtype`` reads diffusers' ``ModelMixin.dtype``).
* **No host synchronisation per site visit.** :class:`SyncProbe` records every call inside an
  analysis' ``observe`` that would make the host wait for an accelerator: host reads of device
  tensors (``item``, ``float()``/``int()``/``bool()``, ``.cpu()``, ``.tolist()``, ``.numpy()``),
  value-dependent output sizes (``nonzero``, boolean-mask indexing, ``unique``, ``eig``...) and
  blocking copies of host-made tensors to the device. On a CPU-only machine every tensor is on the
  CPU, so the probe follows provenance instead of devices: tensors made by a factory without
  ``device=`` (or from numpy) during the visit, and what is computed from them alone, are "host";
  the model's tensors and everything computed from them are "device". Every registered analysis,
  on tiny CogVideoX and Wan pipelines, makes none, except ``lambda2`` (not a default analysis),
  whose Krylov solver (``vidinterp/kernels/spectral.py``) decides on the host when to stop
  restarting and computes the small projected eigenproblem with ``torch.linalg.eig`` (LAPACK on
  the host: a synchronisation on CUDA); its events must all come from that solver. Finalisation
  (``result()``) does read on the host, which the probe sees.
* **Memory features** (each needs ``accelerate``, not a vidinterp dependency, except layerwise
  casting; skipped without it). What runs on the CPU, each traced with the same maps and video as
  without the feature and the model restored afterwards (attention processors, hooks, child
  modules):

  - group offloading, ``transformer.enable_group_offload(onload_device=cpu, offload_device=cpu,
    offload_type="block_level" | "leaf_level")``, and the pipeline's ``enable_group_offload``
    (``use_stream=True`` needs CUDA streams: not on the CPU);
  - ``enable_model_cpu_offload(device="cpu")``;
  - ``device_map``: the pipeline's ``from_pretrained(device_map="cpu")`` and the transformer's
    ``from_pretrained(device_map="auto", max_memory=..., offload_folder=...)`` offloaded to disk
    (weights on ``meta``, loaded by accelerate's hooks at every call: ``Adapter.device`` reads the
    pipeline's execution device);
  - layerwise casting (``enable_layerwise_casting``, float8 storage): runs, maps finite.

  What cannot run on the CPU: the pipeline's ``device_map="balanced"`` spreads components over
  accelerators, and without any diffusers applies no map at all; ``enable_model_cpu_offload()`` and
  ``enable_sequential_cpu_offload()`` without a ``device`` raise "requires accelerator, but not
  found"; ``enable_sequential_cpu_offload(device="cpu")`` fails in the *untraced* pipeline here
  (accelerate's hooks move the weights back to ``meta`` after each call and fail on the CPU, a
  ``TypeError`` in ``set_module_tensor_to_device``), so its test skips with the error while the
  untraced pipeline fails, and checks the trace the day it runs.
* ``benchmarks/gpu_check.py --dry-run`` runs the GPU check's code path on the CPU with tiny
  configs and writes a well-formed JSON report.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import traceback
import weakref
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_flatten

import vidinterp
from vidinterp.analysis import Analysis
from vidinterp.concept_stream import ConceptStream
from vidinterp.registry import adapter_for, analysis_classes
from vidinterp.runtime import Runtime
from vidinterp.testing import tiny_pipeline
from vidinterp.testing.conformance import CONCEPTS, PROMPT, results_of

ROOT = Path(__file__).resolve().parents[1]
#: analyses allowed host synchronisations per visit, and the only file they may come from
KNOWN_SYNCING = {"lambda2": "kernels/spectral.py"}


def clip(pipe) -> np.ndarray:
    frames, height, width = adapter_for(pipe).default_geometry()
    return np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def every_analysis(pipe) -> list:
    """A fresh instance of every registered analysis that reads a site kind of ``pipe``'s model."""
    kinds = {spec.kind for spec in adapter_for(pipe).site_specs()}
    return [cls() for cls in analysis_classes().values() if kinds & set(cls.site_kinds)]


def traced(pipe, analyses=None, **options):
    return vidinterp.trace(pipe, video=clip(pipe), prompt=PROMPT, concepts=CONCEPTS, analyses=analyses,
                           num_inference_steps=4, **options)


# ---------------------------------------------------------------------------- the sync probe
#: Tensor methods and functions that read values on the host.
HOST_READS = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__complex__", "__array__",
              "cpu", "is_nonzero", "equal", "allclose"}
#: Functions whose output size depends on tensor values, or that run on the host (eig).
DATA_DEPENDENT = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "histc",
                  "eig", "eigvals", "repeat_interleave"}
#: Factories: a tensor made without ``device=`` is a host tensor.
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "eye", "tensor", "as_tensor", "randperm", "randn", "rand",
             "randint", "linspace", "logspace", "scalar_tensor", "asarray"}
INDEXING = {"__getitem__", "__setitem__", "index_put_", "index_put"}


def _short_name(func) -> str:
    name = resolve_name(func) or getattr(func, "__name__", str(func))
    return name.rsplit(".", 1)[-1]


def _where() -> str:
    """``folder/file.py:line`` of the innermost project frame (vidinterp, analyses, adapters,
    tests) of the caller."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace("\\", "/")
        if frame.name in ("_where", "__torch_function__", "host_from_numpy"):
            continue
        if any(folder in path for folder in ("/vidinterp/", "/analyses/", "/adapters/", "/tests/")):
            return f"{path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


class SyncProbe(TorchFunctionMode):
    """Records, while active, the calls that would make the host wait for an accelerator (see the
    module docstring): ``events`` is a list of ``(label, operation, where)``."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, str]] = []
        self.label = "?"
        self.entered: Counter[str] = Counter()  # how often each label's code ran under the probe
        self._host: dict[int, weakref.ref] = {}

    def is_host(self, tensor: torch.Tensor) -> bool:
        ref = self._host.get(id(tensor))
        return ref is not None and ref() is tensor

    def mark_host(self, output) -> None:
        for item in tree_flatten(output)[0]:
            if isinstance(item, torch.Tensor):
                self._host[id(item)] = weakref.ref(item)

    def _moves(self, name: str, args, kwargs) -> bool:
        """Whether a ``to``/``cuda``/``copy_`` call puts a host tensor on the model's device."""
        if name == "cuda":
            return True
        if name == "copy_":
            return not self.is_host(args[0])
        targets = [*args[1:], kwargs.get("device"), kwargs.get("other")]
        return any(isinstance(target, (torch.device, str)) or (isinstance(target, torch.Tensor)
                                                               and not self.is_host(target))
                   for target in targets if target is not None and not isinstance(target, torch.dtype))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _short_name(func)
        inputs = [item for item in tree_flatten((args, kwargs))[0] if isinstance(item, torch.Tensor)]
        host = [tensor for tensor in inputs if self.is_host(tensor)]
        device = [tensor for tensor in inputs if not self.is_host(tensor)]
        event = None
        if name in HOST_READS and device:
            event = name
        elif name in DATA_DEPENDENT and device and not (name == "repeat_interleave" and "output_size" in kwargs):
            event = name
        elif name in INDEXING and device and any(index.dtype == torch.bool and index.ndim > 0 for index in inputs[1:]):
            event = f"{name} with a boolean mask"
        elif name in ("to", "cuda", "copy_") and host and self._moves(name, args, kwargs):
            if not kwargs.get("non_blocking", False):
                event = f"{name}: blocking copy of a host tensor to the device"
        elif host and device and any(tensor.ndim > 0 for tensor in host):
            event = f"{name} mixes host and device tensors"
        if event is not None:
            self.events.append((self.label, event, _where()))
        output = func(*args, **kwargs)
        if name in ("to", "cuda") and host:
            if self._moves(name, args, kwargs):
                self._host.pop(id(output), None)  # on the device now (the same object on a CPU run)
            else:
                self.mark_host(output)
        elif name in FACTORIES and "device" not in kwargs and not (name == "as_tensor" and device):
            self.mark_host(output)
        elif name == "cpu" and not any(output is tensor for tensor in device):
            self.mark_host(output)  # (on a CPU run .cpu() returns the device tensor itself: it stays one)
        elif inputs and not device:
            self.mark_host(output)
        return output


@contextmanager
def probing(probe: SyncProbe, label: str):
    """Run the block under ``probe``, its events labelled ``label``."""
    previous, probe.label = probe.label, label
    probe.entered[label] += 1
    from_numpy = torch.from_numpy

    def host_from_numpy(array):  # torch.from_numpy does not reach torch function modes
        tensor = from_numpy(array)
        probe.mark_host(tensor)
        return tensor

    torch.from_numpy = host_from_numpy
    try:
        with probe:
            yield probe
    finally:
        torch.from_numpy = from_numpy
        probe.label = previous


def probe_trace(pipe, analyses: list, monkeypatch) -> SyncProbe:
    """Trace ``analyses`` with every analysis' ``observe`` (per visit, labelled with its name), the
    runtime's whole ``observe_site`` and the concept stream's block updates (label ``runtime``)
    and every ``result()`` (label ``result:<name>``) under one probe."""
    probe = SyncProbe()
    observe_site = Runtime.observe_site

    def probed_observe_site(self, *args, **kwargs):
        with probing(probe, "runtime"):
            return observe_site(self, *args, **kwargs)

    monkeypatch.setattr(Runtime, "observe_site", probed_observe_site)
    for method in ("before_block", "after_block"):  # the concept stream's per-block updates
        def probed_block(self, *args, _method=getattr(ConceptStream, method), **kwargs):
            with probing(probe, "runtime"):
                return _method(self, *args, **kwargs)

        monkeypatch.setattr(ConceptStream, method, probed_block)
    for analysis in analyses:
        def observe(visit, observe=analysis.observe, name=analysis.name):
            with probing(probe, name):
                observe(visit)

        def result(result=analysis.result, name=analysis.name):
            with probing(probe, f"result:{name}"):
                return result()

        analysis.observe, analysis.result = observe, result
    traced(pipe, analyses)
    return probe


class _Syncing(Analysis):
    """Every pattern the probe must catch, once per visit, and the ones it must let through."""

    name = "syncing"
    requires = (("z", "visual"),)

    def update(self, visit):
        from vidinterp.kernels.transfer import to_device

        z = visit.get("z", "visual")  # [B, 2 heads, P, d]
        # allowed: device factories, host bookkeeping, queued copies of host tensors
        z.index_select(1, torch.arange(2, device=z.device)).sum()
        host_mask = torch.zeros(2, dtype=torch.bool)
        host_mask[1] = True
        z.index_select(1, to_device(host_mask.nonzero().squeeze(1), z.device)).sum()
        # caught: each line one event
        z.sum().item()
        float(z.mean())
        bool(z.max() > 0)
        z.flatten()[:3].tolist()
        z.cpu()
        z.flatten().nonzero()
        z[z > 0]
        torch.ones(3).to(z.device)
        z.flatten()[:3] + torch.ones(3)

    def result(self):
        raise NotImplementedError


CAUGHT = {"item", "__float__", "__bool__", "tolist", "cpu", "nonzero", "__getitem__ with a boolean mask",
          "to: blocking copy of a host tensor to the device", "add mixes host and device tensors"}


def test_sync_probe_catches_host_synchronisations(monkeypatch):
    analysis = _Syncing()
    probe = SyncProbe()
    observe = analysis.observe

    def probed(visit):
        with probing(probe, analysis.name):
            observe(visit)

    analysis.observe = probed
    analysis.result = lambda: __import__("xarray").Dataset()
    traced(tiny_pipeline("cogvideox"), [analysis])
    caught = {operation for _, operation, _ in probe.events}
    assert caught == CAUGHT, f"missed {CAUGHT - caught}, flagged too {caught - CAUGHT}"
    elsewhere = [event for event in probe.events if not event[2].startswith("tests/test_gpu_readiness.py")]
    assert not elsewhere, elsewhere


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_no_host_synchronisation_per_site_visit(family, monkeypatch):
    pipe = tiny_pipeline(family)
    analyses = every_analysis(pipe)
    probe = probe_trace(pipe, analyses, monkeypatch)
    names = {analysis.name for analysis in analyses}
    assert all(probe.entered[name] > 0 for name in names) and probe.entered["runtime"] > 0, probe.entered
    per_visit = [event for event in probe.events if event[0] in names and event[0] not in KNOWN_SYNCING]
    assert not per_visit, "host synchronisations inside site visits:\n" + "\n".join(
        f"  {label}: {operation} at {where}" for label, operation, where in sorted(set(per_visit)))
    for name, allowed in KNOWN_SYNCING.items():
        elsewhere = [event for event in probe.events if event[0] == name and allowed not in event[2]]
        assert not elsewhere, f"{name} synchronises outside {allowed}: {sorted(set(elsewhere))}"
    # the runtime's own per-visit work (concept stream, prompt words) reads nothing on the host either
    runtime = [event for event in probe.events if event[0] == "runtime"]
    assert not runtime, f"the runtime synchronises per visit: {sorted(set(runtime))}"
    # finalisation may, and does: the maps reach the host there
    finalisation = {label for label, _, _ in probe.events if label.startswith("result:")}
    assert "result:gramcol" in finalisation and "result:cross_attention" in finalisation, finalisation


# ---------------------------------------------------------------------------- dtypes
def state_tensors(value, path: str = "", seen: set | None = None) -> list[tuple[str, torch.Tensor]]:
    """Every tensor an analysis keeps (attributes, dicts, lists, vidinterp helper objects)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in state_tensors(item, f"{path}[{key!r}]", seen)]
    if isinstance(value, (list, tuple)):
        return [found for i, item in enumerate(value) for found in state_tensors(item, f"{path}[{i}]", seen)]
    if hasattr(value, "__dict__") and type(value).__module__.startswith("vidinterp") \
            and not isinstance(value, torch.nn.Module):
        return [found for key, item in vars(value).items() if key not in ("context", "layout")
                for found in state_tensors(item, f"{path}.{key}", seen)]
    return []


def test_bfloat16_model_accumulates_in_float32_on_its_device():
    from vidinterp.analyses.qk_matching import QKMatching

    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = tiny_pipeline("cogvideox")
        pipe.to(dtype)
        assert pipe.transformer.dtype == dtype and pipe.vae.dtype == dtype
        analyses = [*every_analysis(pipe), QKMatching(keep_maps=True)]
        analyses[-1].name = "qk_matching_maps"
        results[dtype] = results_of(traced(pipe, analyses))
        device = adapter_for(pipe).device
        for analysis in analyses:
            tensors = state_tensors(vars(analysis), analysis.name)
            floating = [(path, tensor) for path, tensor in tensors if tensor.is_floating_point()]
            assert floating or analysis.name == "qk_matching", f"{analysis.name} keeps no floating state"
            for path, tensor in floating:
                assert tensor.dtype == torch.float32, f"{path} is {tensor.dtype} under a {dtype} model"
                assert tensor.device == device, f"{path} is on {tensor.device}, the model on {device}"
    full, half = results[torch.float32], results[torch.bfloat16]
    for name, variable in full.data_vars.items():
        assert half[name].dtype == variable.dtype, name
        if variable.dtype.kind != "f":
            continue
        expected, actual = variable.values, half[name].values
        finite = np.isfinite(expected) & np.isfinite(actual)
        assert finite.mean() > 0.99, name
        scale = np.abs(expected[finite]).max()
        assert np.abs(actual[finite] - expected[finite]).max() <= 0.05 * scale, name
        if finite.sum() > 2 and np.ptp(expected[finite]) > 0:
            assert np.corrcoef(expected[finite], actual[finite])[0, 1] > 0.995, name


def test_running_means_stay_on_the_values_device_in_float32():
    from vidinterp.accumulators import RunningMeans, step_layer_grid

    means = RunningMeans()
    value = torch.tensor([1.0, 2.0, 3.0])
    means.add((0, 1), value)
    value.mul_(0)  # the accumulator holds its own copy
    means.add((0, 1), torch.tensor([3.0, 4.0, 5.0], dtype=torch.float16))
    means.add((1, 1), torch.tensor([1.0, 1.0, 1.0], dtype=torch.bfloat16))
    assert all(total.dtype == torch.float32 and total.device == value.device for total in means.sums.values())
    other = RunningMeans()
    other.add((0, 1), torch.tensor([8.0, 9.0, 10.0], dtype=torch.bfloat16))
    means.merge(other)
    grid, steps, layers = step_layer_grid(means.means(), fill=float("nan"))
    np.testing.assert_allclose(grid[:, 0], [[4.0, 5.0, 6.0], [1.0, 1.0, 1.0]])
    assert grid.dtype == np.float32 and steps == [0, 1] and layers == [1]


def as_loaded_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast ``model`` as ``from_pretrained(torch_dtype=dtype)`` loads it: its
    ``_keep_in_fp32_modules`` stay float32."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            target = torch.float32 if any(part in name.split(".") for part in keep) else dtype
            tensor.data = tensor.data.to(target)


def test_wan_loaded_in_bfloat16_with_float32_modules_traces():
    pipe = tiny_pipeline("wan")
    as_loaded_in(pipe.transformer, torch.bfloat16)
    first = next(pipe.transformer.parameters())
    assert first.dtype == torch.float32, "the check needs a model whose first parameter stays float32"
    assert adapter_for(pipe).dtype == torch.bfloat16
    trace = traced(pipe)
    for name, variable in trace.maps.data_vars.items():
        assert variable.dtype == np.float32 and np.isfinite(variable.values).all(), name


# ---------------------------------------------------------------------------- memory features
def model_state(pipe) -> dict:
    """What a trace must leave as it found: processors (by identity), torch hooks, child modules
    and diffusers hooks of every module of the transformer."""
    transformer = pipe.transformer
    state = {"modules": [name for name, _ in transformer.named_modules()]}
    for name, module in transformer.named_modules():
        if hasattr(module, "processor"):
            state[f"{name}.processor"] = id(module.processor)
        hooks = tuple(len(getattr(module, kind)) for kind in (
            "_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"))
        if any(hooks):
            state[f"{name}.hooks"] = hooks
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            state[f"{name}.diffusers_hooks"] = tuple(registry.hooks)
        if hasattr(module, "_hf_hook"):
            state[f"{name}.hf_hook"] = id(module._hf_hook)
    return state


def assert_same_trace(actual, expected, what: str) -> None:
    assert actual.maps.data_vars.keys() == expected.maps.data_vars.keys(), what
    for name, variable in expected.maps.data_vars.items():
        np.testing.assert_allclose(actual.maps[name].values, variable.values, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{what}: {name}")
    np.testing.assert_array_equal(actual.video, expected.video, err_msg=f"{what}: video")


@pytest.fixture(scope="module")
def baseline():
    return traced(tiny_pipeline("cogvideox"))


def check_feature(pipe, expected, what: str) -> None:
    before = model_state(pipe)
    trace = traced(pipe)
    assert model_state(pipe) == before, f"{what}: the model is not restored after the trace"
    assert_same_trace(trace, expected, what)
    assert_same_trace(traced(pipe), expected, f"{what}, traced again")


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offloading(baseline, offload_type):
    pytest.importorskip("accelerate", reason="diffusers' group offloading moves inputs with accelerate")
    pipe = tiny_pipeline("cogvideox")
    cpu = torch.device("cpu")
    options = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    pipe.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type=offload_type, **options)
    check_feature(pipe, baseline, f"group offloading ({offload_type})")


def test_pipeline_group_offloading(baseline):
    pytest.importorskip("accelerate", reason="diffusers' group offloading moves inputs with accelerate")
    pipe = tiny_pipeline("cogvideox")
    cpu = torch.device("cpu")
    pipe.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level",
                              num_blocks_per_group=1)
    check_feature(pipe, baseline, "pipeline group offloading")


def test_model_cpu_offload(baseline):
    pytest.importorskip("accelerate", reason="enable_model_cpu_offload uses accelerate's hooks")
    pipe = tiny_pipeline("cogvideox")
    with pytest.raises(RuntimeError, match="accelerator"):
        pipe.enable_model_cpu_offload()  # no device and no accelerator: what the module docstring says
    pipe.enable_model_cpu_offload(device="cpu")
    check_feature(pipe, baseline, "model CPU offload")


def test_sequential_cpu_offload(baseline):
    pytest.importorskip("accelerate", reason="enable_sequential_cpu_offload uses accelerate's hooks")
    pipe = tiny_pipeline("cogvideox")
    with pytest.raises(RuntimeError, match="accelerator"):
        pipe.enable_sequential_cpu_offload()
    pipe.enable_sequential_cpu_offload(device="cpu")
    adapter = adapter_for(pipe)
    try:
        pipe(prompt=PROMPT, num_inference_steps=2, output_type="np", **adapter.generation_kwargs(
            *adapter.default_geometry()))
    except Exception as error:  # noqa: BLE001 - the untraced pipeline is what is checked here
        pytest.skip(f"sequential CPU offload does not run on the CPU even untraced: {type(error).__name__}: "
                    f"{str(error).splitlines()[0]}")
    check_feature(pipe, baseline, "sequential CPU offload")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny CogVideoX pipeline saved to disk, and the trace of it reloaded without a device map."""
    pytest.importorskip("accelerate", reason="device_map needs accelerate")
    pytest.importorskip("psutil", reason="accelerate's device maps read the free memory with psutil")
    from diffusers import CogVideoXPipeline

    folder = tmp_path_factory.mktemp("tiny_cogvideox")
    tiny_pipeline("cogvideox").save_pretrained(folder)
    return folder, traced(CogVideoXPipeline.from_pretrained(folder))


def test_pipeline_device_map(saved):
    from diffusers import CogVideoXPipeline

    folder, expected = saved
    pipe = CogVideoXPipeline.from_pretrained(folder, device_map="cpu")
    assert pipe.hf_device_map, "no device map was applied"
    check_feature(pipe, expected, "pipeline device_map='cpu'")
    balanced = CogVideoXPipeline.from_pretrained(folder, device_map="balanced")
    assert balanced.hf_device_map is None  # no accelerators: diffusers applies no map (module docstring)


def test_transformer_offloaded_to_disk(saved, tmp_path):
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    folder, expected = saved
    transformer = CogVideoXTransformer3DModel.from_pretrained(
        folder, subfolder="transformer", device_map="auto", max_memory={"cpu": 1}, offload_folder=tmp_path)
    assert "disk" in set(transformer.hf_device_map.values())
    assert next(transformer.parameters()).device.type == "meta"
    pipe = CogVideoXPipeline.from_pretrained(folder, transformer=transformer)
    assert adapter_for(pipe).device == torch.device("cpu")
    check_feature(pipe, expected, "transformer offloaded to disk (device_map='auto')")


def test_layerwise_casting():
    pipe = tiny_pipeline("cogvideox")
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert adapter_for(pipe).dtype == torch.float32
    before = model_state(pipe)
    trace = traced(pipe)
    assert model_state(pipe) == before
    for name, variable in trace.maps.data_vars.items():
        assert np.isfinite(variable.values).all(), name


# ---------------------------------------------------------------------------- gpu_check dry run
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--repeats", "2", "--warmup", "1",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu" and report["dtype"] == "float32"
    assert set(report["models"]) == {"cogvideox-5b", "wan2.1-14b"}
    for name, entry in report["models"].items():
        assert entry["status"] == "ok", (name, entry)
        assert entry["attention"] == "native (SDPA)" and entry["sync_debug"] is None
        configs = entry["configs"]
        assert set(configs) == {"plain", "four_maps", "default"}
        assert configs["plain"]["analyses"] == [] and len(configs["plain"]["times_ms"]) == 2
        for config in ("four_maps", "default"):
            result = configs[config]
            assert result["analyses"] and result["site_visits"] > 0, (name, config)
            assert result["bitwise_equal"] and result["results_finite"], (name, config)
            assert len(result["times_ms"]) == 2 and math.isfinite(result["time_ratio"]) and result["time_ratio"] > 0
            assert result["peak_ratio"] is None  # peak memory is CUDA's allocator statistic
        assert {"imap", "gramcol", "cross_attention"} <= set(configs["four_maps"]["analyses"])
    assert "concept_attention" in report["models"]["cogvideox-5b"]["configs"]["four_maps"]["analyses"]
    assert "wrote" in completed.stdout
