"""Videos given as arrays or tensors: checked and converted to ``uint8 [frames, height, width, 3]``.

Accepted: a numpy array, torch tensor, or a list/tuple of equal-shaped frames, shaped
``[frames, height, width, channels]`` (channels last) with 3 (RGB), 1 (grey, repeated to RGB)
or 4 (RGBA, composited over black, as transparent GIF/WebP/PNG frames are) channels, either
``uint8`` (0..255) or floating point in ``[0, 1]`` (rounded to ``uint8``). Everything else is
rejected with a ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (shape, values)
that names ``video``, the shape and dtype received and what is expected.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["frames_from_array", "EXPECTED_ARRAY"]

EXPECTED_ARRAY = ("an array or tensor of shape [frames, height, width, 3] (RGB; 1 channel for grey, 4 for RGBA), "
                  "uint8 in 0..255 or float in [0, 1]")


def _refusal(kind: type[Exception], shape, dtype: str, reason: str = "", hint: str = "") -> Exception:
    """One message for every refusal: what ``video`` must be, what it got, why, and a hint."""
    return kind(f"video must be {EXPECTED_ARRAY}; got shape {list(shape)} dtype {dtype}"
                + (f": {reason}" if reason else "") + hint)


def _to_numpy(video) -> tuple[np.ndarray, str]:
    """``(array, the dtype's name as given)``: tensors go to the CPU (bfloat16 and float16 as
    float32, which NumPy or the checks need), lists and tuples of frames are stacked."""
    if isinstance(video, torch.Tensor):
        tensor = video.detach().cpu()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return tensor.numpy(), dtype
    if isinstance(video, np.ndarray):
        return video, str(video.dtype)
    if isinstance(video, (list, tuple)):
        try:
            array = np.asarray([np.asarray(frame.detach().cpu() if isinstance(frame, torch.Tensor) else frame)
                                for frame in video])
        except (ValueError, TypeError) as error:
            raise ValueError(f"video as a list must hold frames of one shape ({EXPECTED_ARRAY} once stacked); "
                             f"numpy could not stack its {len(video)} items: {error}") from None
        return array, str(array.dtype)
    raise TypeError(f"video must be a path (a video file, an animated GIF/WebP or a folder of images) or "
                    f"{EXPECTED_ARRAY}; got {type(video).__name__}")


def frames_from_array(video) -> np.ndarray:
    """Check an array-like ``video`` and return ``uint8 [frames, height, width, 3]``.

    Raises:
        TypeError: not an array, tensor or list of frames, or a dtype that is neither ``uint8``
            nor floating point (bool, other integers, complex, object).
        ValueError: not 4-d channels-last with 1, 3 or 4 channels, no pixels, or float values
            that are not finite or lie outside ``[0, 1]``.
    """
    array, dtype = _to_numpy(video)
    if array.dtype == np.bool_ or not (array.dtype == np.uint8 or np.issubdtype(array.dtype, np.floating)):
        hint = ""
        if array.dtype == np.bool_:
            hint = "; convert a mask with video.astype(np.uint8) * 255"
        elif np.issubdtype(array.dtype, np.integer):
            hint = "; convert integer pixels in 0..255 with video.astype(np.uint8)"
        raise _refusal(TypeError, array.shape, dtype, f"{dtype} is neither uint8 nor floating point", hint)
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        hint = ""
        if array.ndim == 4 and array.shape[1] in (1, 3, 4):
            hint = "; channels must come last: for [frames, 3, height, width] use video.permute(0, 2, 3, 1)"
        elif array.ndim == 3 and array.shape[-1] in (3, 4):
            hint = "; a single image is a video of one frame: pass video[None]"
        reason = (f"{array.ndim} dimensions" if array.ndim != 4 else f"{array.shape[-1]} channels in the last axis")
        raise _refusal(ValueError, array.shape, dtype, reason, hint)
    if array.size == 0:
        raise _refusal(ValueError, array.shape, dtype, "no pixels (every axis must be at least 1)")
    if array.dtype != np.uint8:
        finite = np.isfinite(array)
        if not finite.all():
            raise _refusal(ValueError, array.shape, dtype, f"{int((~finite).sum())} NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            hint = "; divide 0..255 pixels by 255" if low >= 0 and high <= 255 else ""
            raise _refusal(ValueError, array.shape, dtype, f"float values span [{low:.3g}, {high:.3g}]", hint)
        array = np.round(array.astype(np.float32) * 255).astype(np.uint8)
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 4:
        alpha = array[..., 3:].astype(np.uint16)
        return ((array[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    return array
