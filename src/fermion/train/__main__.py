"""`python -m fermion.train --config config.json` (or ``--config-env NAME``, the JSON in that
environment variable, as a job's attempt gets it): one fine-tune attempt."""

from __future__ import annotations

import json
import sys

from . import FinetuneConfig, finetune
from ._cli import read_job_config


def main() -> None:
    cfg = read_job_config(__doc__, FinetuneConfig)

    def progress(row: dict) -> None:
        print(json.dumps(row), flush=True)

    result = finetune(cfg, on_progress=progress)
    print(f"fine-tune {result.status}: accuracy {result.baseline.accuracy:.3f} -> {result.final.accuracy:.3f}",
          flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
