"""Video input: decode files or arrays, check or resample to the model's geometry."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidinterp.adapter import Adapter

__all__ = ["read_video", "as_frames", "resample_video", "prepare_video", "to_model_pixels"]


def read_video(path: str | PathLike, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file to ``uint8`` frames ``[frames, height, width, 3]`` (RGB)."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    frames = []
    for index, frame in enumerate(iio.imiter(path, plugin="pyav")):
        if max_frames is not None and index >= max_frames:
            break
        frames.append(np.asarray(frame)[..., :3])
    if not frames:
        raise ValueError(f"{path} holds no decodable frames")
    return np.stack(frames)


def as_frames(video) -> np.ndarray:
    """Accept a path, a ``[F, H, W, 3]`` uint8/float array or tensor (floats in ``[0, 1]``)
    and return ``uint8`` frames ``[F, H, W, 3]``."""
    if isinstance(video, (str, PathLike)):
        return read_video(video)
    array = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"video array must have shape [frames, height, width, 3], got {list(array.shape)}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"video array must be uint8 or float in [0, 1], got dtype {array.dtype}")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(f"float video values must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]")
    return np.round(array * 255).astype(np.uint8)


def resample_video(frames: np.ndarray, num_frames: int, height: int, width: int) -> np.ndarray:
    """Uniformly pick ``num_frames`` frames over the clip and resize them (bilinear, antialiased)
    to ``height x width``. Returns ``uint8`` ``[num_frames, height, width, 3]``."""
    picks = np.round(np.linspace(0, len(frames) - 1, num_frames)).astype(int)
    tensor = torch.from_numpy(frames[picks]).permute(0, 3, 1, 2).float()
    if tensor.shape[-2:] != (height, width):
        tensor = F.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return tensor.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_model_pixels(frames: np.ndarray) -> torch.Tensor:
    """``uint8`` ``[F, H, W, 3]`` -> float ``[F, 3, H, W]`` in ``[-1, 1]`` (VAE input range)."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def prepare_video(adapter: Adapter, video, num_frames: int | None, height: int | None, width: int | None,
                  resample: bool) -> np.ndarray:
    """Decode ``video`` to ``uint8`` ``[F, H, W, 3]``, resample it to the requested geometry when
    ``resample`` (else require it to match) and check the geometry against the model."""
    frames = as_frames(video)
    given = (frames.shape[0], frames.shape[1], frames.shape[2])
    target = (num_frames or given[0], height or given[1], width or given[2])
    if target != given:
        if not resample:
            raise ValueError(
                f"video has {given[0]} frames at {given[1]}x{given[2]}, but {target[0]} frames at "
                f"{target[1]}x{target[2]} were asked for; pass resample=True to resample it"
            )
        frames = resample_video(frames, *target)
    try:
        adapter.check_geometry(*target)
    except ValueError as error:
        hint = "" if resample else "; pass num_frames/height/width with resample=True to resample"
        raise ValueError(f"{error}{hint}") from None
    return frames
