"""`python -m fermion.train --config config.json` (or ``--config-env NAME``, the JSON in that
environment variable, as a job's attempt gets it): one fine-tune attempt."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import FinetuneConfig, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a JSON file of FinetuneConfig fields")
    source.add_argument("--config-env", help="an environment variable holding that JSON")
    args = parser.parse_args()
    text = Path(args.config).read_text() if args.config else os.environ[args.config_env]
    cfg = FinetuneConfig.model_validate(json.loads(text))

    def progress(row: dict) -> None:
        print(json.dumps(row), flush=True)

    result = finetune(cfg, on_progress=progress)
    print(f"fine-tune {result.status}: accuracy {result.baseline.accuracy:.3f} -> {result.final.accuracy:.3f}",
          flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
