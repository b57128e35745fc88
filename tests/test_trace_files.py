"""Trace files on disk (`Trace.save` / `Trace.load`, `vidinterp.trace_file`): atomic saves,
the format version, old (unversioned) files, and a clear error for every file that is not a trace."""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import h5netcdf
import h5py
import numpy as np
import pytest
import xarray as xr

import vidinterp
import vidinterp.testing
from vidinterp import trace_file
from vidinterp.analyses import CrossAttention
from vidinterp.results import GROUPS, Trace

PREVIOUS = b"an earlier trace: these bytes must stay\n" * 64


@pytest.fixture(scope="module")
def trace() -> Trace:
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    return vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, analyses=[CrossAttention()])


@pytest.fixture(scope="module")
def saved(trace, tmp_path_factory):
    """Bytes of a version-2 file of ``trace``, for the damaged-file cases."""
    return trace.save(tmp_path_factory.mktemp("saved") / "trace.nc").read_bytes()


def assert_same_trace(loaded: Trace, trace: Trace) -> None:
    xr.testing.assert_identical(loaded.maps.cross_attention, trace_file.netcdf_ready(trace.maps, trace.attrs).cross_attention)
    assert np.array_equal(loaded.video, trace.video) and loaded.video.dtype == np.uint8
    assert loaded.attrs["prompt"] == "a dog" and list(loaded.attrs["analysed_steps"]) == trace.attrs["analysed_steps"]
    for group in GROUPS[1:]:
        assert not getattr(loaded, group).data_vars


def write_version_1(trace: Trace, path) -> None:
    """The layout ``Trace.save`` wrote before files were versioned (format version 1), frozen here:
    the same groups, no root attributes."""
    mode = "w"
    for group in GROUPS:
        dataset = getattr(trace, group)
        if not dataset.data_vars:
            continue
        trace_file.netcdf_ready(dataset, trace.attrs).to_netcdf(path, mode=mode, group=group, engine="h5netcdf")
        mode = "a"
    if trace.video is not None:
        video = xr.Dataset({"video": (("pixel_frame", "pixel_y", "pixel_x", "rgb"), trace.video)})
        video.to_netcdf(path, mode=mode, group="video", engine="h5netcdf")


def test_round_trip_writes_format_and_package_version(trace, tmp_path):
    path = trace.save(tmp_path / "out" / "trace.nc")
    assert path == tmp_path / "out" / "trace.nc"
    assert_same_trace(Trace.load(path), trace)
    with h5netcdf.File(path, "r") as handle:
        assert set(handle.groups) == {"maps", "video"}
        version = handle.attrs["vidinterp_format_version"]
        assert isinstance(version, np.integer) and version == trace_file.FORMAT_VERSION == 2
        assert handle.attrs["vidinterp_version"] == vidinterp.__version__
    assert trace_file.file_format_version(path) == 2
    assert os.listdir(path.parent) == ["trace.nc"]
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert (path.stat().st_mode & 0o777) == (reference.stat().st_mode & 0o777)  # umask-respecting, not 0600


def test_save_replaces_an_earlier_file(trace, tmp_path):
    path = tmp_path / "trace.nc"
    path.write_bytes(PREVIOUS)
    trace.save(path)
    assert_same_trace(Trace.load(path), trace)
    assert os.listdir(tmp_path) == ["trace.nc"]


def _unserialisable(trace: Trace) -> Trace:
    """``diagnostics`` (written after ``maps``) holds Python objects netCDF cannot store."""
    bad = xr.Dataset({"bad": ("n", np.array([{"a": 1}, {"b": 2}], dtype=object))})
    return dataclasses.replace(trace, diagnostics=bad)


@pytest.mark.parametrize("failure", ["unserialisable variable", "error after partial write", "KeyboardInterrupt"])
@pytest.mark.parametrize("earlier_file", [True, False])
def test_failed_save_leaves_earlier_file_byte_identical(trace, tmp_path, monkeypatch, failure, earlier_file):
    path = tmp_path / "trace.nc"
    if earlier_file:
        path.write_bytes(PREVIOUS)
    written = []
    if failure != "unserialisable variable":
        error = KeyboardInterrupt if failure == "KeyboardInterrupt" else RuntimeError
        real = xr.Dataset.to_netcdf

        def to_netcdf(self, target, *args, group=None, **kwargs):
            result = real(self, target, *args, group=group, **kwargs)
            written.append(os.path.getsize(target))  # the maps group is on disk by now
            if group == "video":
                raise error("interrupted mid-save")
            return result

        monkeypatch.setattr(xr.Dataset, "to_netcdf", to_netcdf)
        expected = error
    else:
        expected = (ValueError, TypeError)
    with pytest.raises(expected) as raised:
        (_unserialisable(trace) if failure == "unserialisable variable" else trace).save(path)
    if failure != "unserialisable variable":
        assert len(written) == 2 and written[0] > 0
    if sys.version_info >= (3, 11):
        assert any(str(path) in note and "unchanged" in note for note in raised.value.__notes__)
    assert os.listdir(tmp_path) == (["trace.nc"] if earlier_file else [])
    if earlier_file:
        assert path.read_bytes() == PREVIOUS


def test_save_to_a_folder_is_refused(trace, tmp_path):
    with pytest.raises(IsADirectoryError, match=re.escape(str(tmp_path))):
        trace.save(tmp_path)


def _write_mp4(path) -> None:
    import imageio.v3 as iio

    clip = path.with_name("clip.mp4")
    iio.imwrite(clip, np.zeros((4, 16, 16, 3), np.uint8), fps=8, plugin="pyav", codec="libx264")
    clip.replace(path)


def _bad_file(case: str, path, saved: bytes) -> None:
    if case == "text file":
        path.write_text("model,prompt\ncogvideox,a dog\n")
    elif case == "zero-byte file":
        path.write_bytes(b"")
    elif case == "truncated file":
        path.write_bytes(saved[: len(saved) // 2])
    elif case == "mp4":
        _write_mp4(path)
    elif case == "netcdf without groups":
        xr.Dataset({"temperature": ("x", [1.0, 2.0])}, attrs={"title": "weather"}).to_netcdf(path, engine="h5netcdf")
    elif case == "netcdf with other groups":
        xr.Dataset({"a": ("x", [1])}).to_netcdf(path, group="results", engine="h5netcdf")
        xr.Dataset({"b": ("x", [1])}).to_netcdf(path, mode="a", group="extra", engine="h5netcdf")
    elif case == "plain hdf5":
        with h5py.File(path, "w") as handle:
            handle["weights"] = np.zeros(3)


BAD_FILES = [
    ("text file", r"is not a netCDF-4/HDF5 file.*expected a netCDF file written by Trace\.save"),
    ("zero-byte file", r"is empty \(0 bytes\).*expected a netCDF file written by Trace\.save"),
    ("truncated file", r"cannot be read as netCDF \(damaged or truncated\?\).*expected a netCDF file written by Trace\.save"),
    ("mp4", r"is not a netCDF-4/HDF5 file.*expected a netCDF file written by Trace\.save"),
    ("netcdf without groups", r"not a vidinterp trace: found groups \[\] and root attributes \['title'\]; "
                              r"a trace has the root attribute 'vidinterp_format_version' or .*"
                              r"\['diagnostics', 'heads', 'layers', 'maps', 'video'\]"),
    ("netcdf with other groups", r"not a vidinterp trace: found groups \['extra', 'results'\].*"
                                 r"'vidinterp_format_version'.*\['diagnostics', 'heads', 'layers', 'maps', 'video'\]"),
    ("plain hdf5", r"not a vidinterp trace: found groups \[\].*'vidinterp_format_version'"),
]


@pytest.mark.parametrize("case, message", BAD_FILES, ids=[case for case, _ in BAD_FILES])
def test_load_refuses_files_that_are_not_traces(tmp_path, saved, case, message):
    path = tmp_path / "not a trace.nc"
    _bad_file(case, path, saved)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        Trace.load(path)


def test_load_missing_file_names_path(tmp_path):
    path = tmp_path / "missing" / "trace.nc"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        Trace.load(path)


def test_unversioned_file_loads_as_version_1(trace, tmp_path):
    path = tmp_path / "old.nc"
    write_version_1(trace, path)
    with h5netcdf.File(path, "r") as handle:
        assert "vidinterp_format_version" not in handle.attrs
    assert trace_file.file_format_version(path) == 1
    assert_same_trace(Trace.load(path), trace)


def _set_version(path, value) -> None:
    with h5netcdf.File(path, "a") as handle:
        handle.attrs["vidinterp_format_version"] = value
        handle.attrs["vidinterp_version"] = "9.9.9"


def test_newer_format_version_is_refused(trace, tmp_path):
    path = trace.save(tmp_path / "future.nc")
    _set_version(path, np.int32(trace_file.FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*format version 3 \(written by vidinterp 9\.9\.9\)"
                                         r".*reads format versions 1 to 2: upgrade vidinterp"):
        Trace.load(path)


@pytest.mark.parametrize("value", ["2", np.int32(0)])
def test_malformed_format_version_is_refused(trace, tmp_path, value):
    path = trace.save(tmp_path / "odd.nc")
    _set_version(path, value)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*vidinterp_format_version=.*not a positive integer"):
        Trace.load(path)


def test_empty_trace_round_trips(tmp_path):
    path = Trace(maps=xr.Dataset()).save(tmp_path / "empty.nc")
    loaded = Trace.load(path)
    assert trace_file.file_format_version(path) == 2
    assert loaded.video is None and loaded.attrs == {} and all(not getattr(loaded, g).data_vars for g in GROUPS)
