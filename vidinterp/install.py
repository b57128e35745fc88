"""Installing site processors and hooks on a model, and restoring it afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from vidinterp.adapter import Adapter
from vidinterp.runtime import Runtime
from vidinterp.sites import SiteGraph, SiteProcessor

__all__ = ["installed"]


@contextmanager
def installed(adapter: Adapter, runtime: Runtime) -> Iterator[SiteGraph]:
    """Swap every attention processor of ``adapter``'s transformer for a hooked twin and
    register the adapter's module hooks; on exit (also on error or ``KeyboardInterrupt``) put
    the original processor objects back and remove every hook."""
    originals: list[tuple[object, object]] = []
    handles = []
    processors: dict[str, SiteProcessor] = {}
    try:
        for spec in adapter.site_specs():
            attention = adapter.attention_module(spec)
            original = attention.processor
            if isinstance(original, SiteProcessor):
                raise RuntimeError(
                    f"{spec.module_path} already has a vidinterp processor: a trace or hooked() "
                    f"context is still open on this model; nest no second one"
                )
            processor = adapter.make_processor(spec, original, runtime)
            originals.append((attention, original))
            attention.set_processor(processor)
            processors[spec.name] = processor
        handles.extend(adapter.register_hooks(runtime))
        yield SiteGraph(adapter.transformer, processors)
    finally:
        for handle in handles:
            handle.remove()
        for attention, original in reversed(originals):
            attention.set_processor(original)
