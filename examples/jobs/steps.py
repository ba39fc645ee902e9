"""A small checkpointing loop: the shape of any training script that follows Fermion's convention.

Saves its step to $FERMION_CHECKPOINT_DIR after every step (atomically) and, when started
again, resumes from there. Usage: python steps.py [total_steps] [seconds_per_step]"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

total = int(sys.argv[1]) if len(sys.argv) > 1 else 30
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
ckpt = Path(os.environ.get("FERMION_CHECKPOINT_DIR", ".")) / "steps.json"

state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "total": 0}
if state["step"]:
    print(f"resumed from step {state['step']} on {os.environ.get('FERMION_CLOUD')}", flush=True)
while state["step"] < total:
    time.sleep(pause)  # the work of one step
    state["step"] += 1
    state["total"] += state["step"]
    tmp = ckpt.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, ckpt)
    print(f"step {state['step']} on {os.environ.get('FERMION_CLOUD')}", flush=True)
print(f"done: sum of steps {state['total']}", flush=True)
