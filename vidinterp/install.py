"""Installing a trace on a model (site processors, the call listener, the concept stream's block
hooks), and restoring the model afterwards."""

from __future__ import annotations

import inspect
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

from torch import nn

from vidinterp.adapter import Adapter, call_argument
from vidinterp.branches import listen_for_branches
from vidinterp.concept_stream import ConceptStream
from vidinterp.processors import DispatchSiteProcessor, SiteProcessor, intercepting_dispatch
from vidinterp.runtime import Runtime
from vidinterp.sites import SiteGraph

__all__ = ["installed", "call_arguments"]


def call_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a call of ``module`` by name, defaults included."""
    bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs)
    bound.apply_defaults()
    return {name: value for name, value in bound.arguments.items() if name != "self"}


@contextmanager
def installed(adapter: Adapter, runtime: Runtime) -> Iterator[SiteGraph]:
    """Install a trace on ``adapter``'s transformer and yield its :class:`SiteGraph`:

    * every site's attention processor becomes the adapter's :class:`SiteProcessor` for it;
      processors that capture at diffusers' dispatch route the dispatch of their modules;
    * a diffusers hook on the transformer announces each call (its layout, the CFG branch the
      pipeline announced, its arguments) to ``runtime``;
    * with a concept stream, hooks around the blocks of stream sites run the stream's
      block-level updates.

    On exit, also on error or ``KeyboardInterrupt``, the original processor objects go back and
    every hook comes off.
    """
    transformer = adapter.transformer
    with ExitStack() as undo:
        processors: dict[str, SiteProcessor] = {}
        for spec in adapter.site_specs():
            attention = adapter.attention_module(spec)
            original = attention.processor
            if isinstance(original, SiteProcessor):
                raise RuntimeError(
                    f"{spec.module_path} already has a vidinterp processor: a trace or hooked() context is still "
                    f"open on this model; nest no second one"
                )
            processor = adapter.make_processor(spec, original, runtime)
            undo.callback(set_processor, attention, original)
            set_processor(attention, processor)
            processors[spec.name] = processor
        dispatching = [processor for processor in processors.values() if isinstance(processor, DispatchSiteProcessor)]
        if dispatching:
            undo.callback(intercepting_dispatch(dispatching).release)

        def before_call(module, args, kwargs, announced):
            arguments = call_arguments(module, args, kwargs)
            layout = adapter.call_layout(arguments, runtime.pixel_frames)
            runtime.begin_call(layout, announced, arguments, perturbed=adapter.is_perturbed_call(arguments))

        undo.callback(listen_for_branches(transformer, before_call, lambda: runtime.end_call()).remove)
        if isinstance(runtime.concepts, ConceptStream):
            for handle in _stream_block_hooks(adapter, runtime):
                undo.callback(handle.remove)
        yield SiteGraph(transformer, processors)


def _stream_block_hooks(adapter: Adapter, runtime: Runtime) -> list:
    """Forward hooks around each block holding a concept-stream site: the stream's modulation
    before it, its update after it (only while the stream runs)."""
    stream: ConceptStream = runtime.concepts
    temb = stream.spec.temb

    def before_block(block, args, kwargs):
        if runtime.streaming:
            stream.before_block(block, call_argument(block, args, kwargs, temb)[runtime.layout.analysed_rows])

    def after_block(block, args, output):
        if runtime.streaming:
            stream.after_block(block)

    handles = []
    for spec in adapter.site_specs():
        if spec.concept_stream:
            block = adapter.transformer.get_submodule(spec.module_path.rpartition(".")[0])
            handles.append(block.register_forward_pre_hook(before_block, with_kwargs=True))
            handles.append(block.register_forward_hook(after_block))
    return handles


def set_processor(attention: nn.Module, processor: object) -> None:
    """Give ``attention`` the processor ``processor``: its ``set_processor`` where it has one;
    otherwise (e.g. ``MochiAttention``, whose processor is a plain attribute) the same effect,
    dropping a processor registered as a submodule first."""
    if hasattr(attention, "set_processor"):
        attention.set_processor(processor)
        return
    if not isinstance(processor, nn.Module):
        attention._modules.pop("processor", None)
    attention.processor = processor
