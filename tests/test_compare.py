"""The comparison view and the ablation rows, on the trained zoo model and its bundled clip with
exact masks: the rows are the benchmark's, their maps equal the methods traced on their own,
every panel follows one frame slider, each concept entry restyles every panel to that concept's
maps, titles show the scores of ``score_maps`` computed here independently."""

from __future__ import annotations


import numpy as np
import pytest
import xarray as xr

import vidinterp
from vidinterp.ablations import ablation_analyses, ablation_maps, calibrated_layers
from vidinterp.analyses.concept_attention import ConceptAttention
from vidinterp.analyses.imap import IMAP
from vidinterp.datasets.scoring import score_maps
from vidinterp.datasets.shapes import load_clip
from vidinterp.metrics import binarize_at_mean, foreground_background_miou
from vidinterp.plotting.compare import comparison_panels, panel_scores, plot_comparison
from vidinterp.zoo import demo_clip, load

RENOISE = {"num_inference_steps": 50, "seed": 0}


@pytest.fixture(scope="module")
def shapes():
    """The zoo model, its demo clip (two objects, exact masks) and the ablation maps of that clip."""
    pipe, clip = load("shapes"), load_clip(demo_clip())
    ablation = ablation_maps(pipe, clip.frames, clip.caption, clip.concepts, ks=(2,), **RENOISE)
    return pipe, clip, ablation


def strip(values: np.ndarray) -> np.ndarray:
    """``[F, h, w]`` -> frames side by side, ``[h, F * w]`` (the view's map strip)."""
    return np.concatenate(list(values), axis=1)


# ---------------------------------------------------------------------------- ablation rows
def test_ablation_rows_are_the_paper_table_rows():
    """Each row is the analysis the IMAP paper's Table 2 names, built here by hand."""
    from vidinterp.analyses import CrossAttention
    from vidinterp.analyses.gramcol import GramCol
    from vidinterp.kernels.heads import RandomHeads, TopKHeads
    from vidinterp.selectors import AllLayers, LayerIndices

    expected = {}
    for softmax, suffix in (("none", ""), ("final", "+softmax")):
        expected.update({
            f"cross_attention{suffix}": CrossAttention(concept_softmax=softmax),
            f"concept_attention{suffix}": ConceptAttention(concept_softmax=softmax),
            f"gramcol_all_layers{suffix}": GramCol(layers=AllLayers(), concept_softmax=softmax),
            f"gramcol+layer_sel{suffix}": GramCol(layers=LayerIndices([0, 2]), concept_softmax=softmax),
            f"imap(top2_chi){suffix}": GramCol(layers=LayerIndices([0, 2]), concept_softmax=softmax,
                                               heads=TopKHeads("chi", k=2, at_most_heads=True)),
            f"imap_all_layers(top2_chi){suffix}": GramCol(layers=AllLayers(), concept_softmax=softmax,
                                                          heads=TopKHeads("chi", k=2, at_most_heads=True)),
            f"imap(random2){suffix}": GramCol(layers=LayerIndices([0, 2]), heads=RandomHeads(k=2, seed=0),
                                              concept_softmax=softmax),
        })
    rows = ablation_analyses([0, 2], heads=4, ks=(2,), seed=0)
    assert list(rows) == list(expected)

    def defining(analysis) -> dict:
        return {key: repr(getattr(analysis, key, None)) for key in
                ("concept_softmax", "steps", "layers", "heads", "surrogate", "normalize", "head_reduction")}

    for name, analysis in rows.items():
        reference = expected[name]
        assert type(analysis) is type(reference) and defining(analysis) == defining(reference), name
        assert analysis.name == name
    with pytest.raises(ValueError, match=r"ks must be head counts in 1\.\.4"):
        ablation_analyses([0], heads=4, ks=(5,))
    with pytest.raises(ValueError, match="selected_layers is empty"):
        ablation_analyses([], heads=4)


def test_ablation_maps_equal_the_methods_traced_alone(shapes):
    pipe, clip, ablation = shapes
    assert calibrated_layers(pipe) == [0, 2] and ablation.attrs["selected_layers"] == [0, 2]
    assert ablation["maps"].dims == ("variant", "concept", "frame", "y", "x") and ablation.sizes["variant"] == 14
    np.testing.assert_array_equal(ablation["video"].values, clip.frames)
    alone = vidinterp.trace(pipe, video=clip.frames, prompt=clip.caption, concepts=clip.concepts,
                            analyses=[IMAP(k=2), ConceptAttention()], **RENOISE).maps
    maps = ablation["maps"]
    np.testing.assert_allclose(maps.sel({"variant": "imap(top2_chi)"}).values, alone["imap"].values,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps.sel({"variant": "concept_attention"}).values, alone["concept_attention"].values,
                               rtol=1e-5, atol=1e-6)
    raw = alone["concept_attention"].values
    softmax = np.exp(raw - raw.max(axis=0)) / np.exp(raw - raw.max(axis=0)).sum(axis=0)
    np.testing.assert_allclose(maps.sel({"variant": "concept_attention+softmax"}).values, softmax, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- the view
@pytest.fixture(scope="module")
def view(shapes):
    _, clip, ablation = shapes
    methods = ["cross_attention", "gramcol_all_layers", "imap(top2_chi)"]
    items = {name: ablation["maps"].sel({"variant": name}) for name in methods}
    return items, plot_comparison(items, clip.frames, ground_truth=clip, scale=None)


def test_one_slider_moves_every_panel_to_the_frame(view, shapes):
    items, figure = view
    frames, width = shapes[1].num_frames, shapes[1].width
    assert len(figure.layout.sliders) == 1
    steps = figure.layout.sliders[0].steps
    assert len(steps) == frames
    axes = [name for name in figure.layout if name.startswith("xaxis")]
    assert len(axes) == len(items)
    for f, step in enumerate(steps):
        assert step.method == "relayout"
        assert step.args[0] == {f"{axis}.range": [f * width, (f + 1) * width] for axis in axes}
    # what lies in frame f's window is frame f: the video strip and each map strip
    image = figure.data[0]
    np.testing.assert_array_equal(np.asarray(image.z)[:, 2 * width:3 * width], shapes[1].frames[2])


def test_concept_entries_restyle_every_panel_to_that_concepts_maps(view, shapes):
    items, figure = view
    menu = figure.layout.updatemenus[0]
    concepts = shapes[1].concepts
    assert [button.label for button in menu.buttons] == [f"concept: {c}" for c in concepts]
    heatmaps = [i for i, trace in enumerate(figure.data) if trace.type == "heatmap"]
    for button, concept in zip(menu.buttons, concepts):
        assert button.method == "restyle" and list(button.args[1]) == heatmaps
        for z, maps in zip(button.args[0]["z"], items.values()):
            np.testing.assert_array_equal(z, strip(maps.sel(concept=concept).values))
    first = figure.data[heatmaps[0]]
    assert first.dx == first.dy == 4 and first.x0 == 2  # 8x8 tokens over 32x32 pixels, cell centres


def test_default_scaling_is_min_max_per_frame(shapes):
    _, clip, ablation = shapes
    maps = ablation["maps"].sel({"variant": "gramcol_all_layers"})
    figure = plot_comparison({"gramcol": maps}, clip.frames)
    values = maps.sel(concept="down").values
    low, high = values.min(axis=(1, 2), keepdims=True), values.max(axis=(1, 2), keepdims=True)
    z = figure.layout.updatemenus[0].buttons[clip.concepts.index("down")].args[0]["z"][0]
    np.testing.assert_allclose(z, strip((values - low) / (high - low)), rtol=1e-5, atol=1e-6)


def test_titles_hold_the_ground_truth_scores(view, shapes):
    items, figure = view
    clip = shapes[1]
    titles = [annotation.text for annotation in figure.layout.annotations]
    for title, (name, maps) in zip(titles, items.items()):
        samples = score_maps(clip, clip.concepts, maps.values)
        lines = title.split("<br>")
        assert lines[0] == name
        assert f"object mIoU {np.mean(samples['object_miou']):.3f}" in lines
        assert f"motion IoU {np.mean(samples['motion_iou']):.3f}" in lines
        assert f"AUROC (2 obj) {np.mean(samples['auroc_2obj']):.3f}" in lines


def test_other_dims_get_a_dropdown_that_switches_the_panels_carrying_them(shapes):
    pipe, clip, ablation = shapes
    methods = ["cross_attention", "imap(top2_chi)"]
    both = ablation["maps"].sel({"variant": methods})
    items = {"ablation": both, "one": ablation["maps"].sel({"variant": "gramcol_all_layers"})}
    figure = plot_comparison(items, ground_truth=clip)
    menu = figure.layout.updatemenus[1]
    assert [button.label for button in menu.buttons] == [f"variant: {m}" for m in methods]
    heatmaps = [i for i, trace in enumerate(figure.data) if trace.type == "heatmap"]
    assert len(heatmaps) == 3 and [figure.data[i].visible for i in heatmaps] == [True, False, True]
    second = menu.buttons[1]
    assert second.method == "update" and list(second.args[2]) == heatmaps[:2]
    assert second.args[0] == {"visible": [False, True]}
    expected = score_maps(clip, clip.concepts, both.sel({"variant": methods[1]}).values)
    assert second.args[1]["annotations[0].text"].startswith(f"ablation · variant={methods[1]}<br>object mIoU "
                                                            f"{np.mean(expected['object_miou']):.3f}")
    concept = clip.concepts.index("red")
    z = figure.layout.updatemenus[0].buttons[concept].args[0]["z"][1]  # the hidden imap strip follows the concept too
    values = both.sel({"variant": methods[1], "concept": "red"}).values
    low, high = values.min(axis=(1, 2), keepdims=True), values.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(z, strip((values - low) / (high - low)), rtol=1e-5, atol=1e-6)
    # a single Dataset with a method dim: one panel per method, the video from the Dataset
    split = plot_comparison(ablation)
    assert [trace.type for trace in split.data[:2]] == ["image", "heatmap"] and len(split.data) == 28
    assert list(comparison_panels(ablation)) == list(ablation["variant"].values)


def test_pixel_mask_ground_truth_scores_foreground_background_miou(shapes):
    _, clip, ablation = shapes
    red = clip.concept_mask("red")  # bool [F, 32, 32]
    cells = red.reshape(6, 8, 4, 8, 4).mean(axis=(2, 4)) > 0.5  # red's token cells
    maps = xr.DataArray(np.stack([cells, ~cells]).astype(float), dims=("concept", "frame", "y", "x"),
                        coords={"concept": ["red", "blue"]})
    assert panel_scores(maps, {"red": cells.repeat(4, 1).repeat(4, 2)}) == {"mIoU": 1.0}  # a map that is its mask
    assert panel_scores(maps, {"red": red})["mIoU"] < 1.0  # the triangle's pixels are not whole cells
    real = ablation["maps"].sel({"variant": "cross_attention"})
    expected = np.mean([foreground_background_miou(binarize_at_mean(
        real.sel(concept="red").values[f].repeat(4, 0).repeat(4, 1)), red[f]) for f in range(6)])
    assert panel_scores(real, {"red": red, "nothing": red}, ["red", "blue"]) == {"mIoU": pytest.approx(expected)}


def test_bad_items_are_refused_with_what_was_expected(shapes):
    maps = shapes[2]["maps"]
    one = maps.sel({"variant": "cross_attention"})
    with pytest.raises(ValueError, match=r"share their frames .*'short': 3"):
        plot_comparison({"whole": one, "short": one.isel(frame=slice(0, 3))})
    with pytest.raises(ValueError, match=r"not in every item; shared concepts: \[\]"):
        plot_comparison({"a": one.sel(concept=["red"]), "b": one.sel(concept=["blue"])})
    with pytest.raises(ValueError, match="at most one other dim"):
        plot_comparison({"two": maps.expand_dims(step=[1, 2])})
    with pytest.raises(ValueError, match="scale must be one of"):
        plot_comparison({"a": one}, scale="pixel")
    with pytest.raises(TypeError, match="expected a Trace, an xarray Dataset or DataArray"):
        plot_comparison({"a": one.values})


def test_trace_method_compares_its_own_maps_and_names_unknown_ones(shapes):
    pipe, clip, _ = shapes
    trace = vidinterp.trace(pipe, video=clip.frames, prompt=clip.caption, concepts=clip.concepts, **RENOISE)
    figure = trace.plot_comparison(["imap", "gramcol"], ground_truth=clip)
    direct = plot_comparison({"imap": trace.maps["imap"], "gramcol": trace.maps["gramcol"]}, trace.video,
                             ground_truth=clip)
    assert [a.text for a in figure.layout.annotations] == [a.text for a in direct.layout.annotations]
    np.testing.assert_array_equal(figure.data[-1].z, direct.data[-1].z)
    with pytest.raises(ValueError, match="no map 'dog_map'; the maps are \\['cross_attention', "):
        trace.plot_comparison(["dog_map"])


def test_sweeps_from_one_trace_equal_the_rows_and_give_each_panel_its_dropdown(shapes):
    from vidinterp.ablations import sweep_maps, table2_sweeps

    pipe, clip, ablation = shapes
    panels = table2_sweeps([0, 2], heads=4)
    sweep = sweep_maps(pipe, clip.frames, clip.caption, clip.concepts, panels, **RENOISE)
    assert {title: maps.dims[0] for title, maps in sweep.maps.items()} == {
        "cross attention": "softmax", "ConceptAttention": "softmax", "GramCol": "layers", "IMAP": "k",
        "IMAP, random heads": "k"}
    rows = ablation["maps"]
    pairs = [("IMAP", {"k": 2}, "imap(top2_chi)"), ("IMAP, random heads", {"k": 2}, "imap(random2)"),
             ("GramCol", {"layers": "all"}, "gramcol_all_layers"), ("GramCol", {"layers": "selected"}, "gramcol+layer_sel"),
             ("cross attention", {"softmax": "final"}, "cross_attention+softmax")]
    for title, where, row in pairs:
        np.testing.assert_allclose(sweep.maps[title].sel(where).values, rows.sel(variant=row).values, rtol=1e-5,
                                   atol=1e-6, err_msg=title)
    figure = plot_comparison(sweep.maps, sweep.video, ground_truth=clip)
    labels = [button.label for menu in figure.layout.updatemenus[1:] for button in menu.buttons]
    assert labels == ["softmax: none", "softmax: final", "layers: all", "layers: selected", "k: 1", "k: 2", "k: 3", "k: 4"]
    with pytest.raises(ValueError, match="cannot be named 'method'"):
        sweep_maps(pipe, clip.frames, clip.caption, clip.concepts, {"x": ("method", panels["IMAP"][1])})


def test_a_step_sweep_averages_back_to_the_all_steps_map(shapes):
    from vidinterp.ablations import sweep_maps, table2_sweeps

    pipe, clip, _ = shapes
    panels = table2_sweeps([0, 2], heads=4, ks=(3,), steps=(30, 31, 32))
    sweep = sweep_maps(pipe, clip.frames, clip.caption, clip.concepts, panels, num_renoise_steps=3, **RENOISE)
    by_step = sweep.maps["IMAP by step"]
    assert list(by_step["step"].values) == [30, 31, 32] == list(sweep.trace.attrs["analysed_steps"])
    # every step visits the same layers, so the mean of the per-step maps is the map over all steps
    np.testing.assert_allclose(by_step.mean("step").values, sweep.maps["IMAP"].sel(k=3).values, rtol=1e-5, atol=1e-6)
    assert not np.allclose(by_step.sel(step=30).values, by_step.sel(step=32).values)
