"""Loading the model of an evaluation once per process, on that process's device.

``spec`` is ``zoo:<name>`` (a trained model of ``vidinterp.zoo``), ``tiny-<family>`` (an offline
tiny pipeline with random weights, :func:`vidinterp.testing.tiny_pipeline`) or a local pipeline
folder / cached model id (``DiffusionPipeline.from_pretrained``, never downloading).

Large models (a local pipeline only):

* ``dtype``: ``"bfloat16"``, ``"float16"`` or ``"float32"`` (``torch_dtype`` of the load);
* ``device_map``: passed to ``from_pretrained(device_map=...)`` (e.g. ``"balanced"`` spreads the
  components over the visible accelerators); the pipeline is then not moved;
* ``offload``: ``"model"`` runs ``pipe.enable_model_cpu_offload(device=device)`` (each component
  moves to the device while it runs), ``"sequential"`` ``enable_sequential_cpu_offload(device=
  device)`` (sub-module by sub-module: least memory, slowest).

Tracing works with all of them: it computes on :attr:`vidinterp.adapter.Adapter.device`, the
transformer's execution device when offloading hooks hold its weights elsewhere
(``tests/test_gpu_readiness.py`` checks CPU offload, group offloading and device maps against
the plain run). Without any of them the pipeline is moved to ``device``.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["load_model", "OFFLOAD_MODES", "DTYPES"]

OFFLOAD_MODES = ("none", "model", "sequential")
DTYPES = ("float32", "bfloat16", "float16")


def load_model(spec: str, device: Any = "cpu", *, dtype: str | None = None, device_map: str | None = None,
               offload: Literal["none", "model", "sequential"] = "none"):
    """The pipeline ``spec`` names (module docstring), placed on ``device``.

    Raises:
        ValueError: an unknown ``offload``/``dtype``, or ``device_map``/``offload``/``dtype`` with
            a zoo or tiny model, or ``device_map`` together with ``offload``.
        OSError: a local pipeline that cannot be loaded.
    """
    import torch

    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {list(OFFLOAD_MODES)}, got {offload!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if device_map is not None and offload != "none":
        raise ValueError(f"give device_map ({device_map!r}) or offload ({offload!r}), not both")
    builtin = spec.startswith(("zoo:", "tiny-"))
    if builtin and (device_map is not None or offload != "none" or dtype is not None):
        raise ValueError(f"device_map, offload and dtype apply to local pipelines, not to {spec!r}")
    if spec.startswith("zoo:"):
        import vidinterp

        return vidinterp.zoo.load(spec.removeprefix("zoo:"), device=str(device))
    if spec.startswith("tiny-"):
        from vidinterp.testing import tiny_pipeline

        return tiny_pipeline(spec.removeprefix("tiny-")).to(device)
    from diffusers import DiffusionPipeline

    options: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        options["torch_dtype"] = getattr(torch, dtype)
    if device_map is not None:
        options["device_map"] = device_map
    try:
        pipe = DiffusionPipeline.from_pretrained(spec, **options)
    except (OSError, ValueError) as error:
        raise OSError(f"could not load pipeline {spec!r} from local files ({error}); vidinterp never downloads "
                      f"weights: pass a local directory or a model id present in the cache") from error
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif device_map is None:
        pipe = pipe.to(device)
    return pipe
