"""A job that fails by its own error (a bug, not a cloud)."""

import sys

print("loading data...", flush=True)
sys.exit("error: column 'label' missing from train.csv")
