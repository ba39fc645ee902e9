"""``python -m fermion.store.migrations "what changed"``: write the next revision (see __init__)."""

from __future__ import annotations

import sys

from fermion.store import new_revision

if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].strip():
        sys.exit('usage: python -m fermion.store.migrations "what the revision changes"')
    print(new_revision(sys.argv[1]))
