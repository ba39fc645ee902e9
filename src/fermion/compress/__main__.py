"""`python -m fermion.compress --config-env NAME` (the JSON of a CompressConfig in that environment
variable, as a job's attempt gets it) or ``--config FILE``: one compression attempt."""

from __future__ import annotations

import json
import sys

from ..errors import FermionError
from ..train import read_job_config
from . import CompressConfig, compress


def main() -> None:
    cfg = read_job_config(__doc__, CompressConfig)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a job's log: lines, not progress bars
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
