"""The on-disk formats of a :class:`~vidinterp.results.Trace`: one netCDF-4 (HDF5) file, written
with the h5netcdf engine, or (a path ending in ``.zarr``) one zarr store, a folder.

Layout (format version 2, :data:`FORMAT_VERSION`):

* root attributes ``vidinterp_format_version`` (integer, ``2``) and ``vidinterp_version`` (the
  package version that wrote the file);
* one netCDF group per non-empty ``Trace`` Dataset, named after it (``maps``, ``heads``,
  ``layers``, ``diagnostics``: :data:`vidinterp.results.GROUPS`); each group's attributes are the
  trace attrs merged with the Dataset's own, as netCDF-safe values (booleans as ``0``/``1``,
  other non-numeric values as their ``repr``);
* a ``video`` group with one ``uint8`` variable ``video``, dims
  ``(pixel_frame, pixel_y, pixel_x, rgb)``, when the trace has a video.

A zarr store (any path ending in ``.zarr``, written in zarr format 2, which zarr-python 2.18 and 3
both read) has the same layout: the root group's attributes, one zarr group per Dataset, the
``video`` group; every attribute and value is the one the netCDF file holds, so a trace read from
either is identical (``xarray.testing.assert_identical`` per group).

Version 1 (files written before the format was versioned) has the same groups and no root
attributes. Reading differs only in how the file is recognised: a version-2 file is identified by
its ``vidinterp_format_version`` attribute (and may hold no group at all: an empty trace), a
version-1 file by holding at least one of the groups above. Both read the trace attrs from the
first group that has attributes.

:func:`write_trace` writes to a temporary file (or folder) in the target folder and renames it
into place, so a failed or interrupted save leaves any earlier file (or store) at the path
untouched and no temporary file behind. :func:`atomic_output` does the same for any file
(reports, exported videos).
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from vidinterp.results import Trace

__all__ = ["FORMAT_VERSION", "FORMAT_VERSION_ATTR", "PACKAGE_VERSION_ATTR", "VIDEO_GROUP", "ZARR_SUFFIX",
           "write_trace", "read_trace", "file_format_version", "netcdf_ready", "atomic_output",
           "atomic_folder"]

#: The format version :func:`write_trace` writes; :func:`read_trace` reads versions 1 to this.
FORMAT_VERSION = 2
#: Root attribute holding the (integer) format version; absent in version-1 files.
FORMAT_VERSION_ATTR = "vidinterp_format_version"
#: Root attribute holding the version of the vidinterp package that wrote the file.
PACKAGE_VERSION_ATTR = "vidinterp_version"
#: Group holding the video.
VIDEO_GROUP = "video"
#: A path ending in this is written as a zarr store (a folder) instead of a netCDF file.
ZARR_SUFFIX = ".zarr"
_ZARR_FORMAT = 2
_EXPECTED = "expected a netCDF file written by Trace.save"
_EXPECTED_ZARR = "expected a .zarr store written by Trace.save"


def write_trace(trace: "Trace", path: str | PathLike) -> Path:
    """Write ``trace`` to ``path`` atomically and return the path: a zarr store when ``path`` ends
    in ``.zarr``, else a netCDF-4 file.

    Writes the root attributes ``vidinterp_format_version`` (:data:`FORMAT_VERSION`) and
    ``vidinterp_version``, one group per non-empty Dataset of ``trace`` and a ``video`` group when
    it has a video (layout: the module docstring). The file (store) is written to a temporary
    file (folder) in the target folder, flushed to disk and renamed over ``path``; if anything
    fails or is interrupted first (an unserialisable variable, ``KeyboardInterrupt``), the
    temporary is removed, an earlier file (store) at ``path`` is left as it was and the error
    propagates (with a note naming ``path``). Missing parent folders are created.

    Raises:
        IsADirectoryError: ``path`` is a folder and does not end in ``.zarr``.
        FileExistsError: ``path`` ends in ``.zarr`` and holds something that is not a vidinterp
            zarr store (which is never replaced).
    """
    path = Path(path)
    if path.suffix == ZARR_SUFFIX:
        return _write_zarr(trace, path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot save the trace to {path}: it is a directory; give a file path such as "
                                f"{path / 'trace.nc'} (or a path ending in {ZARR_SUFFIX} for a zarr store)")
    with atomic_output(path, what="saving the trace") as temporary:
        import h5netcdf

        with h5netcdf.File(temporary, "w") as handle:
            handle.attrs[FORMAT_VERSION_ATTR] = np.int32(FORMAT_VERSION)
            handle.attrs[PACKAGE_VERSION_ATTR] = _package_version()
        for group, dataset in _groups_to_write(trace):
            dataset.to_netcdf(temporary, mode="a", group=group, engine="h5netcdf")
    return path


def read_trace(path: str | PathLike) -> dict[str, Any]:
    """Read a netCDF file or zarr store written by :func:`write_trace` (any format version from 1
    to :data:`FORMAT_VERSION`) and return the keyword arguments of ``Trace``: one Dataset per
    group (empty where the file has none), ``video`` (or ``None``) and ``attrs``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        IsADirectoryError: ``path`` is a folder that is not a zarr store.
        ValueError: ``path`` is not a netCDF/HDF5 file or zarr store, or not a vidinterp trace,
            or was written in a newer format version; every message names ``path``.
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
                             f"'video' (format version {version}); "
                             f"{_EXPECTED_ZARR if path.is_dir() else _EXPECTED}")
        video = video_group["video"].values
    # Versions 1 and 2 alike: the trace attrs are those of the first group that has any.
    attrs = dict(next((dataset.attrs for dataset in groups.values() if dataset.attrs), {}))
    return {**groups, "video": video, "attrs": attrs}


def file_format_version(path: str | PathLike) -> int:
    """The format version of the vidinterp trace file (or zarr store) at ``path`` (``1`` for an
    unversioned file); raises as :func:`read_trace` does for a missing file or one that is not a
    readable trace."""
    return _inspect(Path(path))[0]


def netcdf_ready(dataset: xr.Dataset, attrs: dict[str, Any]) -> xr.Dataset:
    """A copy of ``dataset`` with ``attrs`` merged under its own attributes, every attribute
    (also the variables') a netCDF-safe value (see :func:`_netcdf_value`)."""
    dataset = dataset.copy()
    dataset.attrs = {key: _netcdf_value(value) for key, value in {**attrs, **dataset.attrs}.items()}
    for variable in dataset.variables.values():
        variable.attrs = {key: _netcdf_value(value) for key, value in variable.attrs.items()}
    return dataset


@contextmanager
def atomic_output(path: str | PathLike, *, what: str = "writing") -> Iterator[Path]:
    """Write a file atomically: yield a new empty temporary file next to ``path`` (same suffix,
    so writers that choose a format by extension choose the right one); when the block ends
    without error, flush it to disk and rename it over ``path``. If the block raises (anything,
    ``KeyboardInterrupt`` included), the temporary file is removed, an earlier file at ``path``
    keeps its bytes, and the error propagates with a note ``"vidinterp: {what} to {path}
    failed; ..."``. Missing parent folders are created.

    >>> with atomic_output("out/report.html", what="writing the report") as temporary:
    ...     temporary.write_text(html)
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} to {path} is not possible: it is a directory; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(path)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        _add_note(error, f"vidinterp: {what} to {path} failed; no file was written there (an earlier file at that "
                         "path is unchanged)")
        raise
    _sync_folder(path.parent)


def _package_version() -> str:
    from vidinterp import __version__

    return __version__


def _groups_to_write(trace: "Trace") -> Iterator[tuple[str, xr.Dataset]]:
    """``(group name, Dataset)`` as written: each non-empty Dataset of ``trace`` netCDF-ready
    with the trace attrs, then the video group when there is a video."""
    from vidinterp.results import GROUPS

    for group in GROUPS:
        dataset = getattr(trace, group)
        if dataset.data_vars:
            yield group, netcdf_ready(dataset, trace.attrs)
    if trace.video is not None:
        yield VIDEO_GROUP, xr.Dataset({"video": (("pixel_frame", "pixel_y", "pixel_x", "rgb"), np.asarray(trace.video))})


def _write_zarr(trace: "Trace", path: Path) -> Path:
    """Write ``trace`` as a zarr store at ``path`` through :func:`atomic_folder` (an earlier store
    stays intact if anything fails); something at ``path`` that is not a vidinterp store is never
    replaced."""
    import zarr

    if path.exists() or path.is_symlink():
        if not _is_vidinterp_zarr(path):
            raise FileExistsError(f"cannot save the trace to {path}: something that is not a vidinterp zarr store is "
                                  f"there, and it is never replaced; remove it or choose another path ending in "
                                  f"{ZARR_SUFFIX}")
    with atomic_folder(path, what="saving the trace") as temporary:
        root = zarr.open_group(str(temporary), mode="w", zarr_format=_ZARR_FORMAT)
        root.attrs.update({FORMAT_VERSION_ATTR: FORMAT_VERSION, PACKAGE_VERSION_ATTR: _package_version()})
        for group, dataset in _groups_to_write(trace):
            dataset.to_zarr(str(temporary), group=group, mode="a", consolidated=False, zarr_format=_ZARR_FORMAT)
    return path


@contextmanager
def atomic_folder(path: str | PathLike, *, what: str = "writing") -> Iterator[Path]:
    """Write a folder (e.g. a zarr store) atomically: yield a new empty temporary folder next to
    ``path``; when the block ends without error, swap it into place (an earlier folder at ``path``
    is moved aside, the new one renamed in, the old one deleted). If the block or the swap
    raises, the temporary folder is removed, an earlier folder at ``path`` is put back unchanged,
    and the error propagates with a note ``"vidinterp: {what} to {path} failed; ..."``.

    >>> with atomic_folder("out/scores.zarr", what="writing the scores") as temporary:
    ...     dataset.to_zarr(temporary)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(path, folder=True)
    aside = None
    try:
        yield temporary
        if path.exists():
            aside = _create_temporary(path, folder=True)
            os.replace(path, aside)
        os.replace(temporary, path)
    except BaseException as error:
        if aside is not None and not path.exists():
            os.replace(aside, path)
            aside = None
        shutil.rmtree(temporary, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        _add_note(error, f"vidinterp: {what} to {path} failed; no store was written there (an earlier store at that "
                         "path is unchanged)")
        raise
    if aside is not None:
        shutil.rmtree(aside)
    _sync_folder(path.parent)


def _add_note(error: BaseException, note: str) -> None:
    if hasattr(error, "add_note"):  # Python >= 3.11
        error.add_note(note)


def _netcdf_value(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return list(value)
    return repr(value)


def _create_temporary(path: Path, *, folder: bool = False) -> Path:
    """A new empty file (or folder) next to ``path``, named ``.{stem}.{random}.tmp{suffix}`` and
    created with the usual permissions (``0o666``/``0o777`` less the umask, like any file ``open``
    or folder ``mkdir`` creates), so the renamed result has them too."""
    while True:
        temporary = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            if folder:
                temporary.mkdir()
            else:
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


def _is_zarr_store(path: Path) -> bool:
    """Whether the folder ``path`` is a zarr group (format 2 ``.zgroup`` or format 3 ``zarr.json``)."""
    return path.is_dir() and ((path / ".zgroup").is_file() or (path / "zarr.json").is_file())


def _is_vidinterp_zarr(path: Path) -> bool:
    try:
        _inspect(path)
    except (OSError, ValueError):
        return False
    return _is_zarr_store(path)


def _inspect(path: Path) -> tuple[int, set[str]]:
    """Check that ``path`` is a vidinterp trace file or zarr store; return its format version and
    group names."""
    if not path.exists():
        raise FileNotFoundError(f"no trace file at {path}")
    if path.is_dir():
        if not _is_zarr_store(path):
            raise IsADirectoryError(f"{path} is a directory but not a zarr store (no .zgroup or zarr.json); "
                                    f"{_EXPECTED} (a file, or a folder ending in {ZARR_SUFFIX})")
        present, root = _zarr_contents(path)
    else:
        present, root = _netcdf_contents(path)
    return _version(path, present, root, zarr=path.is_dir()), present


def _netcdf_contents(path: Path) -> tuple[set[str], dict[str, Any]]:
    """Group names and root attributes of the netCDF file ``path``."""
    import h5netcdf
    import h5py

    with open(path, "rb"):  # a PermissionError here names the path, as it should
        pass
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes), not a netCDF/HDF5 file; {_EXPECTED}")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not a netCDF-4/HDF5 file (no HDF5 signature); {_EXPECTED}")
    try:
        with h5netcdf.File(path, "r") as handle:
            return set(handle.groups), dict(handle.attrs)
    except (FileNotFoundError, PermissionError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise ValueError(f"{path} cannot be read as netCDF (damaged or truncated?): {error}; {_EXPECTED}") from error


def _zarr_contents(path: Path) -> tuple[set[str], dict[str, Any]]:
    """Group names and root attributes of the zarr store ``path``."""
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
        return set(root.group_keys()), dict(root.attrs)
    except (FileNotFoundError, PermissionError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise ValueError(f"{path} cannot be read as a zarr store (damaged?): {error}; {_EXPECTED_ZARR}") from error


def _version(path: Path, present: set[str], root: dict[str, Any], *, zarr: bool) -> int:
    """The format version from the root attributes (``1`` when absent and a trace group is there)."""
    from vidinterp.results import GROUPS

    kind, expected = ("zarr store", _EXPECTED_ZARR) if zarr else ("netCDF file", _EXPECTED)
    known = set(GROUPS) | {VIDEO_GROUP}
    if FORMAT_VERSION_ATTR not in root:
        if not present & known:
            raise ValueError(
                f"{path} is a {kind} but not a vidinterp trace: found groups {sorted(present)} and root "
                f"attributes {sorted(root)}; a trace has the root attribute {FORMAT_VERSION_ATTR!r} or (unversioned, "
                f"format version 1) at least one of the groups {sorted(known)}; {expected}")
        return 1
    raw = root[FORMAT_VERSION_ATTR]
    value = raw.item() if isinstance(raw, np.ndarray) and raw.size == 1 else raw
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{path} has {FORMAT_VERSION_ATTR}={raw!r}, not a positive integer; {expected}")
    version = int(value)
    if version > FORMAT_VERSION:
        writer = root.get(PACKAGE_VERSION_ATTR, "an unknown version")
        raise ValueError(
            f"{path} is a vidinterp trace in format version {version} (written by vidinterp {writer}); this "
            f"vidinterp ({_package_version()}) reads format versions 1 to {FORMAT_VERSION}: upgrade vidinterp to load it")
    return version


def _load_group(path: Path, group: str) -> xr.Dataset:
    try:
        if path.is_dir():
            with xr.open_zarr(str(path), group=group, consolidated=False) as dataset:
                return dataset.load()
        return xr.load_dataset(path, group=group, engine="h5netcdf")
    except (FileNotFoundError, PermissionError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        expected = _EXPECTED_ZARR if path.is_dir() else _EXPECTED
        raise ValueError(f"{path}: cannot read the group {group!r} (damaged file?): {error}; {expected}") from error
