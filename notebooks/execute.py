"""Execute the notebooks top to bottom and store their outputs in place (the committed outputs hold
an interactive plotly figure and a static PNG for each figure, so they read on GitHub).

    python notebooks/execute.py                       # every notebook
    python notebooks/execute.py notebooks/figures.ipynb
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path, timeout: int = 900) -> float:
    """Run ``path`` in a fresh kernel with the notebooks folder as working directory, write it back
    with its outputs and return the seconds it took."""
    started = time.perf_counter()
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(notebook, path)
    return time.perf_counter() - started


def main(paths: list[str]) -> int:
    for path in [Path(p) for p in paths] or sorted(HERE.glob("*.ipynb")):
        print(f"{path.name}: {execute(path):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
