"""Jobs, fine-tunes, compressions and the model registry through the SDK."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from ..errors import UserInputError
from ._http import Transport
from ._progress import ProgressFactory, quiet
from ._results import Code, Job, ModelVersion, Result
from ._transfer import plan_cache, send_plan


class Compressed(Result):
    """A compression: its job, and the variant it registered (None until it succeeds)."""

    job: Job
    model: ModelVersion | None = Field(None, description="the measured variant: the parent's next version")


def ship_code(http: Transport, root: Path, project: str | None = None, pick: bool = True,
              progress: ProgressFactory = quiet) -> Code:
    """Send ``root``'s sources (picked as a photon's are: .gitignore, .fermionignore and secrets left
    out; with ``pick`` False, every file) as a job's code: only the chunks the store lacks."""
    from ..data import plan_folder
    from ..photon.runtime import source_files

    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"--workdir {root} is not a folder", hint="give the folder that holds the job's code")
    with progress(f"reading {root}", None):
        selection = source_files(root.resolve(), kind="job") if pick else None
        plan = plan_folder(root, plan_cache(root) if pick else None,
                           files=sorted(selection.files.items()) if selection else None)
    if not plan.entries:
        raise UserInputError(f"--workdir {root} holds no file to send", hint="check its .gitignore and .fermionignore")
    report = send_plan(http, plan, f"code {root.name or root}", "/code/missing", "/code/chunks", {"project": project},
                       progress)
    code = http.request("POST", "/code", json={"project": project, "files": [e.model_dump() for e in plan.entries]})
    return Code.model_validate({**code, "sent_bytes": report.bytes_sent,
                                "left_out": list(selection.skipped) if selection else []})


def ship_local_data(http: Transport, settings: dict[str, Any], spec: dict[str, Any], project: str | None,
                    progress: ProgressFactory = quiet) -> Code | None:
    """A data file of this machine's goes with the job as its code (its cloud has no other way to
    it): ``settings`` then name it code/..., and ``spec`` carries the code's digest."""
    local = {key: value for key in ("train_data", "eval_data")
             if (value := settings.get(key)) is not None and not str(value).startswith("dataset:")}
    if not local:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        for key, value in local.items():
            if not Path(value).is_file():
                raise UserInputError(f"--{key.replace('_', '-').replace('train-', '')}: {value} is not a file",
                                     hint="give a .csv or .jsonl file, or dataset:NAME@VERSION/PATH")
            rel = f"{key.split('_')[0]}/{Path(value).name}"
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(value, Path(tmp) / rel)
            settings[key] = f"code/{rel}"
        code = ship_code(http, Path(tmp), project, pick=False, progress=progress)
    spec["code"] = code.digest
    return code


class Jobs:
    """``conn.jobs()`` lists them; ``conn.jobs.run(...)`` starts one."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self) -> list[Job]:
        return [Job.model_validate(j) for j in self._http.get("/jobs")]

    def get(self, name: str) -> Job:
        return Job.model_validate(self._http.get(f"/jobs/{name}"))

    def logs(self, name: str, tail: int = 100) -> dict[str, str]:
        """Each attempt's log (its last ``tail`` lines), by attempt."""
        return self._http.get(f"/jobs/{name}/logs", tail=tail)

    def cancel(self, name: str) -> Job:
        return Job.model_validate(self._http.request("POST", f"/jobs/{name}/cancel"))

    def submit(self, spec: dict[str, Any], *, wait: bool = False, timeout: float = 3600,
               on_update: Callable[[Job], None] | None = None) -> Job:
        """Start a job from its spec (the fields of POST /api/v1/jobs); with ``wait``, follow it to its end."""
        job = Job.model_validate(self._http.request("POST", "/jobs", json=spec))
        return self.wait(job.name, timeout, on_update) if wait else job

    def wait(self, name: str, timeout: float = 3600, on_update: Callable[[Job], None] | None = None) -> Job:
        """Poll until the job ends (or ``timeout`` passes: the job as it stands); ``on_update`` sees each poll."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(name)
            if on_update is not None:
                on_update(job)
            if job.done or time.monotonic() > deadline:
                return job
            time.sleep(0.5)

    def run(self, name: str, command: list[str] | None = None, *, workdir: str | Path | None = None,
            cpus: float = 1, memory_gb: float = 1, clouds: list[str] | None = None, env: dict[str, str] | None = None,
            datasets: list[str] | None = None, workers: int = 1, max_restarts: int = 2, spot: bool = False,
            egress: bool = False, project: str | None = None, wait: bool = False, timeout: float = 3600,
            on_update: Callable[[Job], None] | None = None, progress: ProgressFactory = quiet) -> Job:
        """Run ``command`` as a job on the best cloud; ``workdir`` is sent with it (the command runs
        in a copy of it); ``datasets`` (NAME or NAME@VERSION) are fetched into $FERMION_DATA_DIR/NAME;
        ``egress``: it may reach the network (on a local cloud it then shares the machine's)."""
        spec: dict[str, Any] = {"name": name, "command": list(command or []), "resources": {"cpus": cpus,
                                "memory_gb": memory_gb, **({"egress": True} if egress else {})}, "workers": workers, "max_restarts": max_restarts,
                                "spot": spot}
        for key, value in (("clouds", clouds), ("env", env), ("datasets", datasets), ("project", project)):
            if value:
                spec[key] = value
        if workdir is not None:
            spec["code"] = ship_code(self._http, Path(workdir), project, progress=progress).digest
        return self.submit(spec, wait=wait, timeout=timeout, on_update=on_update)

    def finetune(self, name: str, data: str, *, eval_data: str | None = None, base: str | None = None,
                 method: str = "lora", epochs: int = 4, batch_size: int = 16, grad_accum: int = 1, lr: float = 1e-3,
                 precision: str = "auto", checkpoint_every: int = 10, seed: int = 0, model_name: str | None = None,
                 clouds: list[str] | None = None, cpus: float = 1, max_restarts: int = 1, project: str | None = None,
                 wait: bool = True, timeout: float = 3600, on_update: Callable[[Job], None] | None = None,
                 progress: ProgressFactory = quiet) -> Job:
        """Fine-tune a transformers encoder for classification (LoRA or full) as a job; the result is
        registered as ``model_name`` (default: the job's name). ``data``: a local .csv/.jsonl (sent with
        the job) or dataset:NAME[@VERSION]/PATH; ``base``: a model folder or registry NAME:VERSION."""
        base_dir = str(Path(base).resolve()) if base and Path(base).exists() else base
        settings: dict[str, Any] = {"train_data": data, "eval_data": eval_data, "base": base_dir, "method": method,
                                    "epochs": epochs, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr,
                                    "precision": precision, "checkpoint_every": checkpoint_every, "seed": seed}
        spec: dict[str, Any] = {"name": name, "finetune": settings, "model_name": model_name,
                                "clouds": list(clouds or []), "resources": {"cpus": cpus, "memory_gb": 2},
                                "max_restarts": max_restarts, "project": project}
        ship_local_data(self._http, settings, spec, project, progress)
        return self.submit(spec, wait=wait, timeout=timeout, on_update=on_update)

    def compress(self, model: str | ModelVersion, method: str, *, backend: str = "onnx", sparsity: float = 0.5,
                 prune_kind: str = "structured", layers: int | None = None, epochs: int = 6, lr: float = 1e-4,
                 candidates: list[str] | None = None, max_accuracy_drop: float = 1.0, data: str | None = None,
                 eval_data: str | None = None, name: str | None = None, model_name: str | None = None,
                 clouds: list[str] | None = None, cpus: float = 1, memory_gb: float = 4, project: str | None = None,
                 wait: bool = True, timeout: float = 3600, on_update: Callable[[Job], None] | None = None,
                 progress: ProgressFactory = quiet) -> Compressed:
        """Make a registered classifier smaller or faster (quantize, onnx, prune, distill, auto, or
        steps joined by '+') as a job; the variant is the model's next version, measured beside it."""
        ref = model.ref if isinstance(model, ModelVersion) else model
        settings = {"backend": backend, "sparsity": sparsity, "prune_kind": prune_kind, "layers": layers,
                    "epochs": epochs, "lr": lr}
        body: dict[str, Any] = {"model": ref, "method": method, "settings": settings,
                                "max_accuracy_drop": max_accuracy_drop, "train_data": data, "eval_data": eval_data}
        if candidates:
            body["candidates"] = list(candidates)
        stem = "".join(c if c.isalnum() else "-" for c in f"{ref}-{method}".lower()).strip("-")[:40]
        spec: dict[str, Any] = {"name": name or f"{stem}-{int(time.time()) % 100000}", "compress": body,
                                "model_name": model_name, "clouds": list(clouds or []), "max_restarts": 1,
                                "resources": {"cpus": cpus, "memory_gb": memory_gb}, "project": project}
        ship_local_data(self._http, body, spec, project, progress)
        job = self.submit(spec, wait=wait, timeout=timeout, on_update=on_update)
        variant = None
        if job.result and job.result.get("model"):
            variant = ModelVersion.model_validate(self._http.get(f"/models/{job.result['model']}"))
        return Compressed(job=job, model=variant)


class Models:
    """The registry: ``conn.models()`` lists every version; ``conn.models.get('name:3')`` is one."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self) -> list[ModelVersion]:
        return [ModelVersion.model_validate(m) for m in self._http.get("/models")]

    def get(self, ref: str) -> ModelVersion:
        """NAME:VERSION, or NAME for its newest version."""
        return ModelVersion.model_validate(self._http.get(f"/models/{ref}"))

    def promote(self, ref: str, stage: str = "production") -> ModelVersion:
        """Move a version to a stage (staging, production, archived); one production version per model."""
        return ModelVersion.model_validate(self._http.request("POST", f"/models/{ref}/promote", json={"stage": stage}))

    def delete(self, ref: str) -> None:
        """Delete a version and its artifact (refused while a deployment serves it)."""
        self._http.request("DELETE", f"/models/{ref}")
