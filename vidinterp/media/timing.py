"""Which source frames a fitted clip keeps: frames picked evenly over the clip's duration, each
the source frame nearest in time.

Times are in seconds from the clip's first frame when the source knows them (container
timestamps, GIF/WebP frame durations), else frame indices (arrays, image folders). Ties go to the
earlier frame. The same rule runs two ways: on a list of known frame times
(:func:`nearest_indices`) and on a stream of decoded frames whose times are seen one at a time
(:class:`NearestPicker`), which decides each pick as soon as the first frame past its target time
arrives, so a decoder never has to hold more than the previous frame.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

import numpy as np

__all__ = ["target_times", "nearest_indices", "NearestPicker"]

Handle = TypeVar("Handle")


def target_times(times: np.ndarray, count: int) -> np.ndarray:
    """``count`` times spread evenly from the first to the last of the source frame ``times``
    (``float64 [frames]``, increasing; seconds or frame indices); one frame takes the middle
    time. With ``count == len(times)`` and evenly spaced times, every frame is picked once.

    Returns ``float64 [count]``.
    """
    times = np.asarray(times, dtype=np.float64)
    if count < 1:
        raise ValueError(f"count must be >= 1 frame, got {count}")
    if times.ndim != 1 or not len(times):
        raise ValueError(f"times must be a non-empty 1-d array of frame times, got shape {list(times.shape)}")
    if count == 1:
        return np.array([(times[0] + times[-1]) / 2])
    return np.linspace(times[0], times[-1], count)


def nearest_indices(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For every target time, the index of the nearest of the increasing frame ``times`` (ties:
    the earlier frame). Returns ``int64 [len(targets)]``."""
    times = np.asarray(times, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    after = np.clip(np.searchsorted(times, targets, side="left"), 0, len(times) - 1)
    before = np.clip(after - 1, 0, len(times) - 1)
    take_before = np.abs(targets - times[before]) <= np.abs(times[after] - targets)
    return np.where(take_before, before, after).astype(np.int64)


class NearestPicker(Generic[Handle]):
    """Streams ``(time, handle)`` pairs in increasing time and keeps, for each target time, the
    nearest frame (ties: the earlier), loaded once with ``load(handle)`` at the moment it is
    picked.

    Only the previous handle is held between offers, so a decoder feeding this keeps at most two
    undecided frames; picked frames are kept as ``load`` returns them (e.g. already resized).
    :attr:`done` turns true once every target is decided, so decoding can stop early.

    Args:
        targets: ``float64 [n]`` target times, increasing (as :func:`target_times` gives).
        load: turns a picked handle into the kept frame (called once per distinct frame).
    """

    def __init__(self, targets: np.ndarray, load: Callable[[Handle], Any]):
        self.targets = np.asarray(targets, dtype=np.float64)
        self.load = load
        self.picked: list[Any] = [None] * len(self.targets)
        self.offered = 0
        self._next = 0
        self._previous: tuple[float, int, Handle] | None = None
        self._loaded: tuple[int, Any] | None = None

    @property
    def done(self) -> bool:
        """Every target has its frame."""
        return self._next >= len(self.targets)

    def offer(self, time: float, handle: Handle) -> None:
        """The next decoded frame, at ``time`` (greater than every earlier offer's)."""
        index = self.offered
        self.offered += 1
        while self._next < len(self.targets) and self.targets[self._next] <= time:
            target = self.targets[self._next]
            previous = self._previous
            if previous is not None and target - previous[0] <= time - target:
                self.picked[self._next] = self._load(previous[1], previous[2])
            else:
                self.picked[self._next] = self._load(index, handle)
            self._next += 1
        self._previous = (time, index, handle)

    def finish(self) -> list[Any] | None:
        """The picked frames, one per target; targets after the last frame's time take the last
        frame. ``None`` when no frame was offered."""
        if self._previous is None:
            return None
        _, index, handle = self._previous
        while not self.done:
            self.picked[self._next] = self._load(index, handle)
            self._next += 1
        self._previous = None
        return self.picked

    def _load(self, index: int, handle: Handle) -> Any:
        # picks are decided in increasing time, so a frame picked twice is the last one loaded
        if self._loaded is None or self._loaded[0] != index:
            self._loaded = (index, self.load(handle))
        return self._loaded[1]
