"""``python -m nemo_lite.train`` (what ``torchrun --nproc_per_node N -m nemo_lite.train --config CFG`` runs): the
``nemo-lite train`` command. The training code lives in :mod:`nemo_lite.training`; this entry module only starts
it, and nothing imports it back, so it runs once."""

from __future__ import annotations

import sys

from .training.command import main

if __name__ == "__main__":
    sys.exit(main())
