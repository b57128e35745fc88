"""The on-disk format of a :class:`~vidinterp.results.Trace`: one netCDF-4 (HDF5) file, written
with the h5netcdf engine.

Layout (format version 2, :data:`FORMAT_VERSION`):

* root attributes ``vidinterp_format_version`` (integer, ``2``) and ``vidinterp_version`` (the
  package version that wrote the file);
* one netCDF group per non-empty ``Trace`` Dataset, named after it (``maps``, ``heads``,
  ``layers``, ``diagnostics``: :data:`vidinterp.results.GROUPS`); each group's attributes are the
  trace attrs merged with the Dataset's own, as netCDF-safe values (booleans as ``0``/``1``,
  other non-numeric values as their ``repr``);
* a ``video`` group with one ``uint8`` variable ``video``, dims
  ``(pixel_frame, pixel_y, pixel_x, rgb)``, when the trace has a video.

Version 1 (files written before the format was versioned) has the same groups and no root
attributes. Reading differs only in how the file is recognised: a version-2 file is identified by
its ``vidinterp_format_version`` attribute (and may hold no group at all: an empty trace), a
version-1 file by holding at least one of the groups above. Both read the trace attrs from the
first group that has attributes.

:func:`write_trace` writes to a temporary file in the target folder and renames it into place,
so a failed or interrupted save leaves any earlier file at the path untouched and no temporary
file behind.
"""

from __future__ import annotations

import os
import secrets
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from vidinterp.results import Trace

__all__ = ["FORMAT_VERSION", "FORMAT_VERSION_ATTR", "PACKAGE_VERSION_ATTR", "VIDEO_GROUP", "write_trace",
           "read_trace", "file_format_version"]

#: The format version :func:`write_trace` writes; :func:`read_trace` reads versions 1 to this.
FORMAT_VERSION = 2
#: Root attribute holding the (integer) format version; absent in version-1 files.
FORMAT_VERSION_ATTR = "vidinterp_format_version"
#: Root attribute holding the version of the vidinterp package that wrote the file.
PACKAGE_VERSION_ATTR = "vidinterp_version"
#: Group holding the video.
VIDEO_GROUP = "video"
_EXPECTED = "expected a netCDF file written by Trace.save"


def write_trace(trace: "Trace", path: str | PathLike) -> Path:
    """Write ``trace`` to ``path`` atomically and return the path.

    Writes the root attributes ``vidinterp_format_version`` (:data:`FORMAT_VERSION`) and
    ``vidinterp_version``, one group per non-empty Dataset of ``trace`` and a ``video`` group when
    it has a video (layout: the module docstring). The file is written to a temporary file in
    the target folder, flushed to disk and renamed over ``path`` (:func:`os.replace`); if anything
    fails or is interrupted first (an unserialisable variable, ``KeyboardInterrupt``), the
    temporary file is removed, an earlier file at ``path`` keeps its bytes and the error
    propagates (with a note naming ``path``). Missing parent folders are created.
    """
    from vidinterp import __version__
    from vidinterp.results import GROUPS

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot save the trace to {path}: it is a directory; give a file path such as "
                                f"{path / 'trace.nc'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(path)
    try:
        import h5netcdf

        with h5netcdf.File(temporary, "w") as handle:
            handle.attrs[FORMAT_VERSION_ATTR] = np.int32(FORMAT_VERSION)
            handle.attrs[PACKAGE_VERSION_ATTR] = __version__
        for group in GROUPS:
            dataset = getattr(trace, group)
            if dataset.data_vars:
                netcdf_ready(dataset, trace.attrs).to_netcdf(temporary, mode="a", group=group, engine="h5netcdf")
        if trace.video is not None:
            video = xr.Dataset({"video": (("pixel_frame", "pixel_y", "pixel_x", "rgb"), np.asarray(trace.video))})
            video.to_netcdf(temporary, mode="a", group=VIDEO_GROUP, engine="h5netcdf")
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if hasattr(error, "add_note"):  # Python >= 3.11
            error.add_note(f"vidinterp: saving the trace to {path} failed; no file was written there "
                           "(an earlier file at that path is unchanged)")
        raise
    _sync_folder(path.parent)
    return path


def read_trace(path: str | PathLike) -> dict[str, Any]:
    """Read a file written by :func:`write_trace` (any format version from 1 to
    :data:`FORMAT_VERSION`) and return the keyword arguments of ``Trace``: one Dataset per group
    (empty where the file has none), ``video`` (or ``None``) and ``attrs``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: ``path`` is not a netCDF/HDF5 file, or not a vidinterp trace, or was written
            in a newer format version; every message names ``path``.
    """
    from vidinterp.results import GROUPS

    path = Path(path)
    version, present = _inspect(path)
    groups = {group: _load_group(path, group) if group in present else xr.Dataset() for group in GROUPS}
    video = None
    if VIDEO_GROUP in present:
        video_group = _load_group(path, VIDEO_GROUP)
        if "video" not in video_group.data_vars:
            raise ValueError(f"{path}: the 'video' group holds {sorted(video_group.data_vars)}, not the variable "
                             f"'video' (format version {version}); {_EXPECTED}")
        video = video_group["video"].values
    # Versions 1 and 2 alike: the trace attrs are those of the first group that has any.
    attrs = dict(next((dataset.attrs for dataset in groups.values() if dataset.attrs), {}))
    return {**groups, "video": video, "attrs": attrs}


def file_format_version(path: str | PathLike) -> int:
    """The format version of the vidinterp trace file at ``path`` (``1`` for an unversioned file);
    raises as :func:`read_trace` does for a missing file or one that is not a readable trace."""
    return _inspect(Path(path))[0]


def netcdf_ready(dataset: xr.Dataset, attrs: dict[str, Any]) -> xr.Dataset:
    """A copy of ``dataset`` with ``attrs`` merged under its own attributes, every attribute
    (also the variables') a netCDF-safe value (see :func:`_netcdf_value`)."""
    dataset = dataset.copy()
    dataset.attrs = {key: _netcdf_value(value) for key, value in {**attrs, **dataset.attrs}.items()}
    for variable in dataset.variables.values():
        variable.attrs = {key: _netcdf_value(value) for key, value in variable.attrs.items()}
    return dataset


def _netcdf_value(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return list(value)
    return repr(value)


def _create_temporary(path: Path) -> Path:
    """A new empty file next to ``path``, created with the usual permissions (``0o666`` less the
    umask, like any file ``open`` creates), so the renamed trace file has them too."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return temporary


def _sync_folder(folder: Path) -> None:
    """Flush the rename to disk where the platform allows opening a folder (POSIX)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _inspect(path: Path) -> tuple[int, set[str]]:
    """Check that ``path`` is a vidinterp trace file; return its format version and group names."""
    import h5netcdf
    import h5py

    from vidinterp import __version__
    from vidinterp.results import GROUPS

    if not path.exists():
        raise FileNotFoundError(f"no trace file at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; {_EXPECTED}")
    with open(path, "rb"):  # a PermissionError here names the path, as it should
        pass
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes), not a netCDF/HDF5 file; {_EXPECTED}")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not a netCDF-4/HDF5 file (no HDF5 signature); {_EXPECTED}")
    try:
        with h5netcdf.File(path, "r") as handle:
            present = set(handle.groups)
            root = dict(handle.attrs)
    except (FileNotFoundError, PermissionError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise ValueError(f"{path} cannot be read as netCDF (damaged or truncated?): {error}; {_EXPECTED}") from error
    known = set(GROUPS) | {VIDEO_GROUP}
    if FORMAT_VERSION_ATTR not in root:
        if not present & known:
            raise ValueError(
                f"{path} is a netCDF file but not a vidinterp trace: found groups {sorted(present)} and root "
                f"attributes {sorted(root)}; a trace has the root attribute {FORMAT_VERSION_ATTR!r} or (unversioned, "
                f"format version 1) at least one of the groups {sorted(known)}; {_EXPECTED}")
        return 1, present
    raw = root[FORMAT_VERSION_ATTR]
    value = raw.item() if isinstance(raw, np.ndarray) and raw.size == 1 else raw
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{path} has {FORMAT_VERSION_ATTR}={raw!r}, not a positive integer; {_EXPECTED}")
    version = int(value)
    if version > FORMAT_VERSION:
        writer = root.get(PACKAGE_VERSION_ATTR, "an unknown version")
        raise ValueError(
            f"{path} is a vidinterp trace in format version {version} (written by vidinterp {writer}); this "
            f"vidinterp ({__version__}) reads format versions 1 to {FORMAT_VERSION}: upgrade vidinterp to load it")
    return version, present


def _load_group(path: Path, group: str) -> xr.Dataset:
    try:
        return xr.load_dataset(path, group=group, engine="h5netcdf")
    except (FileNotFoundError, PermissionError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise ValueError(f"{path}: cannot read the group {group!r} (damaged file?): {error}; {_EXPECTED}") from error
