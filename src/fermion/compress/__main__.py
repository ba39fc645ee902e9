"""`python -m fermion.compress --config-env NAME` (the JSON of a CompressConfig in that environment
variable, as a job's attempt gets it) or ``--config FILE``: one compression attempt."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import FermionError
from . import CompressConfig, compress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a JSON file of CompressConfig fields")
    source.add_argument("--config-env", help="an environment variable holding that JSON")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a job's log: lines, not progress bars
    text = Path(args.config).read_text() if args.config else os.environ[args.config_env]
    cfg = CompressConfig.model_validate(json.loads(text))
    try:
        result = compress(cfg, on_progress=lambda row: print(json.dumps(row), flush=True))
    except FermionError as exc:  # the model or the settings do not fit: say so, no traceback
        print(f"compress failed: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    r = result.report
    print(f"compress {result.chosen}: accuracy {result.parent.accuracy:.3f} -> {r.measured.accuracy:.3f}, "
          f"{r.speedup:.2f}x throughput, {r.size_ratio:.2f}x size, agreement {r.agreement:.1%}", flush=True)


if __name__ == "__main__":
    main()
