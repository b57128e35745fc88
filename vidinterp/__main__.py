"""``python -m vidinterp``: the command line (:mod:`vidinterp.cli`), also under ``accelerate launch
-m vidinterp`` and ``torchrun -m vidinterp``."""

import sys

from vidinterp.cli import main

if __name__ == "__main__":
    sys.exit(main())
