"""Run by ``tests/test_eval_sharded.py`` under torchrun: ``vidinterp eval`` on every real-layout
fixture, one after the other in the same process group.

    python -m torch.distributed.run --nproc_per_node 2 tests/eval_layouts_driver.py PATHS.json OUT

``PATHS.json`` maps each layout to the path its fixture writer returned.
"""

import json
import sys
from pathlib import Path

from vidinterp.cli import main

LAYOUTS = ("mevis", "davis2017", "vspw", "imagenet_seg", "voc2012", "tapvid_davis", "tapvid_kinetics")


def arguments(name: str, data: str, out: Path) -> list[str]:
    """The ``vidinterp eval`` command line of one layout's fixture at ``data`` (tiny CogVideoX, 4 steps)."""
    return ["eval", name, "--data", data, "--model", "tiny-cogvideox", "--steps", "4",
            "--renoise-step", "2", "--out", str(out / name), "--bootstrap", "200", "--no-progress", "--cpu"]


if __name__ == "__main__":
    paths, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    sys.exit(max(main(arguments(name, paths[name], out)) for name in LAYOUTS))
