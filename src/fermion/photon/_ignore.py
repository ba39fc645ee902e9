"""What ``fermion photon build`` leaves out of a .photon: ignore files and secrets.

A photon is packed from the folder around its file, and that folder may hold far
more than code: a Fermion home (admin token, database), keys, ``.env`` files.
Those are never packed unless the caller names them in ``include``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

import pathspec

from ..errors import PhotonLoadError

WARN_BYTES = 10 * 1024 * 1024  # above this, weights have likely slipped into the sources
IGNORE_FILES = (".gitignore", ".fermionignore")  # in this order: .fermionignore has the last word

# Either file marks a Fermion home (FERMION_HOME): token, database, cached photons of others.
HOME_MARKERS = ("cli.json", "fermion.db")
# Matched against the lower-cased file name, so that ID_RSA or Prod.PEM are caught too.
SECRET_NAMES = (
    "cli.json", "fermion.db", "fermion.db-wal", "fermion.db-shm", "master.key",
    ".env", ".env.*", ".netrc", ".pgpass", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519",
    "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
    "credentials", "credentials.json", "service-account*.json",
)  # fmt: skip
SECRET_DIRS = frozenset({".aws", ".ssh", ".gnupg"})
# Secret only inside their tool's folder; a config.json elsewhere is ordinary code.
SECRET_PATHS = ((".docker", "config.json"), (".kube", "config"))


def is_fermion_home(folder: Path) -> bool:
    """Whether ``folder`` looks like a Fermion home; such a folder is skipped whole."""
    return any((folder / marker).exists() for marker in HOME_MARKERS)


def is_secret_dir(folder: Path) -> bool:
    """Whether ``folder`` is skipped whole: a credentials folder (.ssh, .aws, .gnupg) or a Fermion home."""
    return folder.name in SECRET_DIRS or is_fermion_home(folder)


def secret_paths_in(folder: Path, rel: str) -> list[str]:
    """The secret files of SECRET_PATHS in ``folder`` (at ``rel``), which the walk skips unseen as a dot folder."""
    return [f"{rel}/{name}" for parent, name in SECRET_PATHS if folder.name == parent and (folder / name).is_file()]


def is_secret_file(rel: str) -> bool:
    """Whether the file at ``rel`` (posix, relative to the photon folder) is named like a secret."""
    parts = PurePosixPath(rel).parts
    name = parts[-1].lower()
    return any(fnmatchcase(name, pattern) for pattern in SECRET_NAMES) or tuple(parts[-2:]) in SECRET_PATHS


def is_secret(root: Path, rel: str) -> bool:
    """Whether ``rel`` is a secret by its name or by a folder it sits in (for files named in ``include``)."""
    parents = PurePosixPath(rel).parents
    return is_secret_file(rel) or any(p.name and is_secret_dir(root / p) for p in parents)


class IgnoreRules:
    """The .gitignore and .fermionignore files met so far in a top-down walk, each anchored at its folder."""

    def __init__(self) -> None:
        # (folder prefix ending in "/" or "", spec) per ignore file kind, shallow folders first
        self._layers: dict[str, list[tuple[str, pathspec.GitIgnoreSpec]]] = {name: [] for name in IGNORE_FILES}

    def load(self, folder: Path, prefix: str) -> None:
        for name in IGNORE_FILES:
            path = folder / name
            if path.is_file():
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
                self._layers[name].append((prefix, pathspec.GitIgnoreSpec.from_lines(lines)))

    def ignored(self, rel: str, *, is_dir: bool) -> bool:
        """Git's verdict: the last matching pattern wins, deeper files over shallower, .fermionignore over all."""
        verdict = False
        for prefix, spec in (layer for name in IGNORE_FILES for layer in self._layers[name]):
            if not rel.startswith(prefix):  # that ignore file lives in a folder that does not hold rel
                continue
            sub = rel[len(prefix) :]
            result = spec.check_file(sub + "/" if is_dir else sub)  # the "/" lets "build/" match folders only
            if result.include is not None:
                verdict = result.include
        return verdict


def explicit_path(root: Path, item: str | Path) -> str:
    """``item`` from ``include`` as a posix path relative to ``root``, checked to be a plain file inside it."""
    full = root / item  # an absolute item stays absolute
    try:
        rel = full.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise PhotonLoadError(f"cannot include {item}: it is not inside the photon folder {root}") from None
    if full.is_symlink():
        raise PhotonLoadError(f"cannot include {item}: it is a link; links are never packed")
    if not full.is_file():
        raise PhotonLoadError(f"cannot include {item}: no such file in {root}", hint="name files, not folders")
    return rel


@dataclass
class Selection:
    """The files a build packs and the secrets it left out."""

    files: dict[str, Path] = field(default_factory=dict)  # archive path -> file on disk
    sizes: dict[str, int] = field(default_factory=dict)  # archive path -> bytes
    skipped: list[str] = field(default_factory=list)  # secrets left out; "dir/" for a whole folder
    included_secrets: list[str] = field(default_factory=list)  # secrets packed because include named them

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def warnings(self) -> list[str]:
        out = [f"{rel} looks like a secret and is packed: it was named explicitly" for rel in self.included_secrets]
        if self.total_bytes > WARN_BYTES:
            out.append(
                f"the photon's sources total {self.total_bytes / 2**20:.1f} MiB (over {WARN_BYTES >> 20} MiB): "
                "keep weights and data out of the photon and load them in init()"
            )
        return out

