"""The command line a job's attempt runs: its settings as JSON, from a file or an environment variable."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

Config = TypeVar("Config", bound=BaseModel)


def read_job_config(description: str | None, model: type[Config]) -> Config:
    """``--config FILE`` or ``--config-env NAME`` (the JSON in that variable, as an attempt gets it)."""
    parser = argparse.ArgumentParser(description=description)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help=f"a JSON file of {model.__name__} fields")
    source.add_argument("--config-env", help="an environment variable holding that JSON")
    args = parser.parse_args()
    text = Path(args.config).read_text() if args.config else os.environ[args.config_env]
    return model.model_validate(json.loads(text))
