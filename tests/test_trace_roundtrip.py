"""A real trace (maps, heads, layers, diagnostics and a video) round-trips through netCDF and zarr
identically; zarr saves are atomic and never replace what is not a vidinterp store."""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import numpy as np
import pytest
import xarray as xr
import zarr

import vidinterp
import vidinterp.testing
from vidinterp import trace_file
from vidinterp.registry import analysis_classes
from vidinterp.results import GROUPS, Trace

ANALYSES = ("cross_attention", "imap", "lambda2", "qk_matching", "separation")


@pytest.fixture(scope="module")
def trace() -> Trace:
    classes = analysis_classes()
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    traced = vidinterp.trace(pipe, prompt="a dog on grass", concepts=["dog", "grass"], num_inference_steps=2,
                             analyses=[classes[name]() for name in ANALYSES])
    assert all(getattr(traced, group).data_vars for group in GROUPS) and traced.video is not None
    return traced


@pytest.fixture(scope="module")
def loaded(trace, tmp_path_factory) -> dict[str, Trace]:
    folder = tmp_path_factory.mktemp("round trip")
    return {suffix: Trace.load(trace.save(folder / f"trace{suffix}")) for suffix in (".nc", ".zarr")}


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_is_identical_in_netcdf_and_zarr(trace, loaded, group):
    expected = trace_file.netcdf_ready(getattr(trace, group), trace.attrs)
    for suffix in (".nc", ".zarr"):
        xr.testing.assert_identical(getattr(loaded[suffix], group), expected)
    xr.testing.assert_identical(getattr(loaded[".zarr"], group), getattr(loaded[".nc"], group))


def test_video_and_attrs_round_trip(trace, loaded):
    for copy in loaded.values():
        assert copy.video.dtype == np.uint8 and copy.video.shape == trace.video.shape
        assert copy.video.tobytes() == trace.video.tobytes()
        assert copy.attrs["prompt"] == "a dog on grass" and copy.attrs["imap.method"] == "imap"
    zarr_attrs, netcdf_attrs = loaded[".zarr"].attrs, loaded[".nc"].attrs
    assert zarr_attrs.keys() == netcdf_attrs.keys()
    assert all(np.array_equal(zarr_attrs[key], netcdf_attrs[key]) for key in zarr_attrs)


def test_zarr_store_layout(trace, tmp_path):
    path = trace.save(tmp_path / "trace.zarr")
    assert path.is_dir() and os.listdir(tmp_path) == ["trace.zarr"]
    root = zarr.open_group(str(path), mode="r")
    assert set(root.group_keys()) == {*GROUPS, "video"}
    assert root.attrs["vidinterp_format_version"] == trace_file.FORMAT_VERSION == 2
    assert root.attrs["vidinterp_version"] == vidinterp.__version__
    assert trace_file.file_format_version(path) == 2
    assert root["video"]["video"].shape == trace.video.shape


def _small(trace: Trace) -> Trace:
    """Another trace to save first: only the cross-attention maps, no video."""
    maps = trace.maps[["cross_attention"]].copy()
    maps.attrs = {}
    return Trace(maps=maps, attrs={"prompt": "earlier"})


def test_save_replaces_an_earlier_store(trace, tmp_path):
    path = _small(trace).save(tmp_path / "trace.zarr")
    trace.save(path)
    assert os.listdir(tmp_path) == ["trace.zarr"]
    assert set(Trace.load(path).maps.data_vars) == set(trace.maps.data_vars)


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_failed_save_leaves_the_earlier_store_intact(trace, tmp_path, monkeypatch, failure):
    path = _small(trace).save(tmp_path / "trace.zarr")
    before = {name: (path / name).read_bytes() for name in _files(path)}
    real = xr.Dataset.to_zarr

    def to_zarr(self, store, *args, group=None, **kwargs):
        if group == "video":  # the other groups are written by now
            raise failure("interrupted mid-save")
        return real(self, store, *args, group=group, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_zarr", to_zarr)
    with pytest.raises(failure) as raised:
        trace.save(path)
    if sys.version_info >= (3, 11):
        assert any(str(path) in note and "unchanged" in note for note in raised.value.__notes__)
    assert os.listdir(tmp_path) == ["trace.zarr"]
    assert {name: (path / name).read_bytes() for name in _files(path)} == before
    assert Trace.load(path).attrs["prompt"] == "earlier"


def _files(folder) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_a_folder_that_is_not_a_store_is_never_replaced(trace, tmp_path):
    folder = tmp_path / "photos.zarr"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not a trace")
    with pytest.raises(FileExistsError, match=re.escape(str(folder)) + ".*not a vidinterp zarr store"):
        trace.save(folder)
    assert _files(folder) == ["holiday.jpg"] and (folder / "holiday.jpg").read_bytes() == b"not a trace"


def test_reading_folders_that_are_not_traces(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(IsADirectoryError, match=re.escape(str(plain)) + ".*not a zarr store"):
        Trace.load(plain)
    other = tmp_path / "other.zarr"
    xr.Dataset({"t": ("x", [1.0])}).to_zarr(str(other), group="weather", zarr_format=2, consolidated=False)
    with pytest.raises(ValueError, match=re.escape(str(other)) + r".*is a zarr store but not a vidinterp trace: "
                                         r"found groups \['weather'\].*expected a \.zarr store"):
        Trace.load(other)


def test_empty_trace_round_trips_as_zarr(tmp_path):
    loaded = Trace.load(Trace(maps=xr.Dataset()).save(tmp_path / "empty.zarr"))
    assert loaded.video is None and loaded.attrs == {} and all(not getattr(loaded, g).data_vars for g in GROUPS)


def test_zarr_store_of_a_trace_without_video(trace, tmp_path):
    without = dataclasses.replace(trace, video=None)
    loaded = Trace.load(without.save(tmp_path / "no video.zarr"))
    assert loaded.video is None
    xr.testing.assert_identical(loaded.layers, trace_file.netcdf_ready(trace.layers, trace.attrs))
