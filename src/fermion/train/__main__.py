"""`python -m fermion.train --config config.json`: one fine-tune attempt (as a job runs it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import FinetuneConfig, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="a JSON file of FinetuneConfig fields")
    args = parser.parse_args()
    cfg = FinetuneConfig.model_validate(json.loads(Path(args.config).read_text()))

    def progress(row: dict) -> None:
        print(json.dumps(row), flush=True)

    result = finetune(cfg, on_progress=progress)
    print(f"fine-tune {result.status}: accuracy {result.baseline.accuracy:.3f} -> {result.final.accuracy:.3f}",
          flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
