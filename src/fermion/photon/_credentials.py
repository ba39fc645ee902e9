"""Credential-like files that ``fermion photon build`` leaves out, judged by name and by content.

Content is judged by Yelp's detect-secrets (its maintained plugins and filters, called in-process),
and by the magic of formats no rule set knows: Fermion's backups, databases, tokens and master key,
and kubeconfigs. detect-secrets is imported only when a build scans, so ``import fermion`` stays cheap.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import PhotonLoadError
from ._ignore import Selection, is_secret_file

MAX_SCAN_BYTES = 1 << 20  # larger files are judged by name and magic only: a scan costs about a second per MiB
SNIFF_BYTES = 64 * 1024  # enough of a file (or of its gunzipped start) to see a format's header
_TEXT_PROBE = 8192  # a NUL byte this early means binary, as git decides

# Python modules are code: they are judged by content only, so that credentials.py or api_token.py still pack.
_CODE_SUFFIXES = (".py", ".pyi")
_TOKEN_STEMS = ("token", "access_token", "refresh_token", "auth_token", "api_token", "bearer_token", "id_token",
                "hf_token", "github_token", "gh_token", "api_key", "apikey")
_DATA_SUFFIXES = ("", ".txt", ".json", ".yaml", ".yml")
# (patterns on the lower-cased file name, what such a file is), beyond _ignore.SECRET_NAMES
CREDENTIAL_NAMES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("kubeconfig", "kubeconfig.*", "kubeconfig-*", "*.kubeconfig", "*-kubeconfig", "*_kubeconfig"), "a kubeconfig"),
    (("*.fbk", "*.fbk.*"), "a Fermion backup"),
    (("secrets.*", "*.secrets.*", "*-secrets.*", "*_secrets.*", "*.secrets", "*.secret"), "a secrets file"),
    (tuple(s + x for s in _TOKEN_STEMS for x in _DATA_SUFFIXES) + ("*.token", "*_token", "*-token", "*_token.txt",
                                                                   "*-token.txt", ".vault-token"), "a token file"),
    (("credentials*", "*.credentials", "*-credentials*", "*_credentials*", ".git-credentials", "*accesskeys*.csv"),
     "a credentials file"),
    (("*service-account*.json", "*service_account*.json", "*serviceaccount*.json", "sa.json", "*-sa.json",
      "*_sa.json", "*-sa-key.json", "*_sa_key.json"), "a service-account key"),
    (("id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.ppk", "*.keytab", "*.kdbx", "*.p8"), "a private key"),
    (("*.tfstate", "*.tfstate.*", "*.tfvars"), "Terraform state or variables"),
    (("*.env", "env.*", "*.env.*"), "an environment file"),
    (("client_secret*.json", "*token*cache*.json", "accesstokens.json", "msal_token_cache*", "*.apps.googleusercontent.com.json"),
     "an OAuth client secret or a cloud CLI's token cache"),
    ((".htpasswd", "htpasswd", ".pypirc", ".npmrc", ".dockercfg", ".s3cfg", ".boto"),
     "a tool's credentials file"),
)  # fmt: skip

# detect-secrets plugins left out: the high-entropy ones flag sha256 digests, UUID-like ids and base64 blobs of
# ordinary code and model configs; a public IP address is no credential. KeywordDetector (password: ...) counts in
# config files only (_KEYWORD_TYPES): in Python it flags names (SECRET_REF = "secret:"), and tokenizer vocabularies
# (JSON, text) hold words like "password", which would cost a slow line-by-line scan of a megabyte each.
_EXCLUDED_PLUGINS = frozenset({"Base64HighEntropyString", "HexHighEntropyString", "IPPublicDetector"})
_KEYWORD_TYPES = frozenset({"YAML", "CONFIG", "INI", "PROPERTIES", "TOML"})  # detect-secrets' FileType names

# Fermion's own formats (see fermion.security.new_token, store._backup, security._secrets, store._offsite)
_FERMION_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])fm[a-z]{0,2}_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
_MASTER_KEY = re.compile(r"[A-Za-z0-9+/]{43}=")
_BACKUP_FORMAT = re.compile(rb'"format"\s*:\s*"fermion-backup"')  # store._backup.FORMAT, in manifest.json
_SEALED_BACKUP = b"FBKE"  # store._offsite.MAGIC without its version digit
_SQLITE = b"SQLite format 3\x00"
_FERMION_TABLE = re.compile(rb'CREATE TABLE "?project_secrets"?')
_KUBE_KIND = re.compile(r'^\s*"?kind"?\s*:\s*["\']?Config["\']?\s*,?\s*$', re.MULTILINE)
_KUBE_USERS = re.compile(r'^\s*"?users"?\s*:', re.MULTILINE)
_KUBE_CREDENTIAL = re.compile(r'["\']?(client-key-data|client-certificate-data)["\']?\s*:\s*["\']?[A-Za-z0-9+/=]{16}')
# security.SECRET_REF and SECRET_NAME_PATTERN; not imported, as fermion.security costs a second to import
_SECRET_REF = re.compile(r"secret:[A-Za-z_][A-Za-z0-9_.-]{0,127}")

_SCAN_LOCK = threading.Lock()  # detect-secrets keeps its settings in one global: one scan at a time


@dataclass
class ExplainedSelection(Selection):
    """A Selection that says why each file left out (or packed though named) looks like a credential."""

    reasons: dict[str, str] = field(default_factory=dict)  # path -> why it looks like a credential
    entry_secrets: list[str] = field(default_factory=list)  # the entry file, packed though credential-like

    def leave_out(self, rel: str, why: str) -> None:
        if rel not in self.skipped:
            self.skipped.append(rel)
        self.reasons[rel] = why

    def warnings(self) -> list[str]:
        named = set(self.included_secrets)
        out = [f"{rel} looks like a secret and is packed: it was named explicitly ({self.reasons.get(rel, '?')})"
               for rel in self.included_secrets]
        out += [f"{rel}, the photon's entry file, looks like a secret ({self.reasons.get(rel, '?')}) and is packed: "
                "keep credentials in Fermion secrets (--env NAME=secret:NAME), not in code"
                for rel in self.entry_secrets if rel not in named]
        return out + Selection.warnings(replace(self, included_secrets=[]))  # the size warning, as before


def name_reason(rel: str) -> str | None:
    """Why the file at ``rel`` (posix, relative to the photon folder) looks like a credential by its name."""
    if is_secret_file(rel):
        return "named like a key, credential or Fermion state file"
    name = PurePosixPath(rel).name.lower()
    if name.endswith(_CODE_SUFFIXES):
        return None
    for patterns, what in CREDENTIAL_NAMES:
        if any(fnmatchcase(name, pattern) for pattern in patterns):
            return f"named like {what}"
    return None


def content_reasons(files: Mapping[str, Path]) -> dict[str, str]:
    """Why each of ``files`` (archive path -> file) looks like a credential by its content; clean ones are absent."""
    out: dict[str, str] = {}
    with _detect_secrets() as detect:
        for rel, path in files.items():
            try:
                why = _judge(path, rel, detect)
            except OSError as exc:  # unreadable is not clean: packing it would fail anyway
                raise PhotonLoadError(f"cannot read {rel} to check it for credentials: {exc.strerror or exc}") from None
            if why:
                out[rel] = why
    return out


def _judge(path: Path, rel: str, detect: Callable[[str, str], str | None]) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as f:
        data = f.read(MAX_SCAN_BYTES if size <= MAX_SCAN_BYTES else SNIFF_BYTES)
    if why := sniff_binary(data):
        return why
    if size > MAX_SCAN_BYTES or b"\0" in data[:_TEXT_PROBE]:
        return None  # too big or binary to scan: judged by name and magic only
    # a byte of another encoding (café in latin-1) must not make a file unscannable: a key is ASCII
    text = data.decode("utf-8", errors="replace")
    return sniff_text(text) or detect(rel, text)


def sniff_binary(head: bytes) -> str | None:
    """What Fermion state ``head`` (a file's first bytes) is the start of, if any."""
    if head.startswith(_SEALED_BACKUP) and head[4:5].isdigit():
        return "a sealed Fermion backup (magic FBKE)"
    if head.startswith(_SQLITE) and _FERMION_TABLE.search(head):
        return "a Fermion database (token digests, sealed secrets)"
    tar = _gunzip_head(head) if head.startswith(b"\x1f\x8b") else head
    if tar[257:262] == b"ustar" and _BACKUP_FORMAT.search(tar):
        return "a Fermion backup (its manifest says fermion-backup: master key, tokens)"
    return None


def _gunzip_head(head: bytes) -> bytes:
    try:
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(head, SNIFF_BYTES)  # bounded: no gzip bomb
    except zlib.error:
        return b""


def sniff_text(text: str) -> str | None:
    """What credential of a format detect-secrets does not know ``text`` holds, if any."""
    if match := _FERMION_TOKEN.search(text):
        return f"line {text.count(chr(10), 0, match.start()) + 1}: Fermion API token"
    if len(text) < 64 and _MASTER_KEY.fullmatch(text.strip()) and _is_key(text.strip()):
        return "a 32-byte key in base64, as Fermion's master.key is"
    if _KUBE_KIND.search(text) and _KUBE_USERS.search(text):
        return "a kubeconfig (kind: Config, with users)"
    if _KUBE_CREDENTIAL.search(text):  # any layout: JSON, flow-style YAML
        return "a kubeconfig's client key or token"
    return None


def _is_key(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


@contextmanager
def _detect_secrets() -> Iterator[Callable[[str, str], str | None]]:
    """A judge by detect-secrets' plugins and filters, under settings of our own that are undone afterwards."""
    _import_detect_secrets()
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.core.scan import _process_line_based_plugins as scan_lines
    from detect_secrets.plugins.keyword import KeywordDetector
    from detect_secrets.settings import get_plugins, transient_settings
    from detect_secrets.util.filetype import determine_file_type

    classes = get_mapping_from_secret_type_to_class().values()
    plugins = [{"name": c.__name__} for c in classes if c.__name__ not in _EXCLUDED_PLUGINS]
    with _SCAN_LOCK, transient_settings({"plugins_used": plugins}):
        code, config = _prefilters(get_plugins(), keyword=False), _prefilters(get_plugins(), keyword=True)

        def detect(rel: str, text: str) -> str | None:
            keyword = determine_file_type(rel).name in _KEYWORD_TYPES
            lines = re.split(r"\r\n|\r|\n", text)  # as text mode reads them
            flat = "\n".join(line.rstrip() for line in lines)  # detect-secrets strips each line's end
            if not any(p.search(flat) for p in (config if keyword else code)):
                return None  # no rule can match: spares the line-by-line scan, a hundred times slower
            try:  # scan_file's own loop, without its YAML and INI parsers (an alias bomb hangs them)
                for secret in scan_lines(list(enumerate(lines, start=1)), filename=rel):
                    assignment = secret.type == KeywordDetector.secret_type
                    if not assignment or (keyword and not _is_reference(secret.secret_value)):
                        return f"line {secret.line_number}: {secret.type} (detect-secrets)"
            except Exception as exc:  # noqa: BLE001 - a file the rules could not judge is not a clean one
                return f"could not be scanned ({type(exc).__name__}): left out to be safe"
            return None

        yield detect


def _is_reference(value: str | None) -> bool:
    """Whether a keyword's value is a Fermion secret reference (``API_KEY: secret:api-key``), not a secret."""
    return _SECRET_REF.fullmatch(value or "") is not None


def _prefilters(plugins: list[Any], *, keyword: bool) -> list[re.Pattern[str]]:
    """Each plugin's own patterns, to run over a whole file: a file none matches has nothing a line scan finds."""
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.keyword import DENYLIST_REGEX, KeywordDetector

    out: list[re.Pattern[str]] = []
    for plugin in plugins:
        if isinstance(plugin, RegexBasedDetector):  # analyze_string is findall of each pattern, line by line
            out += [re.compile(p.pattern, p.flags | re.MULTILINE) for p in plugin.denylist]
        elif isinstance(plugin, KeywordDetector):
            out += [re.compile(DENYLIST_REGEX, re.IGNORECASE)] if keyword else []
        else:
            out.append(re.compile(""))  # a plugin we cannot pre-check: every file is scanned
    return out


def _import_detect_secrets() -> None:
    shown = warnings.showwarning
    try:
        import detect_secrets.core.scan  # noqa: F401 - imports its logger, which the finally undoes the effect of
    except ImportError as exc:
        raise PhotonLoadError(
            f"cannot check the sources for credentials: detect-secrets is not installed ({exc})",
            hint="pip install detect-secrets==1.5.0 (a dependency of fermion)",
        ) from None
    finally:
        warnings.showwarning = shown  # its logger calls logging.captureWarnings(True), for the whole process
