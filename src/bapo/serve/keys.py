"""Per-user API keys for ``bapo serve --keys FILE``: each key may use only the adapters its entry names.

The file is YAML, a list of entries::

    - name: alice                 # who holds the key (for whoever reads this file)
      sha256: 3f1c...e9           # sha256 of the key, 64 hex digits: the key itself is never stored
      adapters: [alice, alice-*]  # adapter names or shell patterns (fnmatch) this key may use
      base: true                  # may it ask the base model (default true)

``bapo keys add FILE --name alice --adapters 'alice*'`` makes a random key, prints it once and adds its hash.
Keys are random tokens (32 bytes), not passwords, so one sha256 is as strong as a slow hash here; a presented key
is hashed and compared against every entry with :func:`hmac.compare_digest`, never stopping early, so the time to
answer does not depend on which entry (if any) it matched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bapo.errors import ConfigError
from bapo.io import atomic_write_text

HEX64 = re.compile(r"^[0-9a-f]{64}$")
PATTERN = re.compile(r"^[A-Za-z0-9._*?\[\]!-]{1,128}$")  # an adapter name, or a pattern of one
FIELDS = {"name", "sha256", "adapters", "base"}


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What one key may use."""

    name: str
    sha256: str
    adapters: tuple[str, ...]
    base: bool = True

    def allows(self, adapter: str) -> bool:
        return any(fnmatch.fnmatchcase(adapter, p) for p in self.adapters)


@dataclass
class Keys:
    """Every key's grant, from a keys file."""

    grants: list[Grant] = field(default_factory=list)

    def find(self, key: str) -> Grant | None:
        """The grant of ``key``, or None: every entry compared, in constant time each."""
        digest = key_hash(key).encode()
        found = None
        for g in self.grants:
            if hmac.compare_digest(digest, g.sha256.encode()) and found is None:
                found = g
        return found


def load_keys(path: str | Path) -> Keys:
    """The keys in ``path``; :class:`ConfigError` naming the file, entry and field for anything wrong in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"keys: cannot read {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ConfigError(f"{path}: must be a list of keys (- name: ..., sha256: ..., adapters: [...])")
    lines = [n.start_mark.line + 1 for n in yaml.compose(text).value]
    grants, seen = [], {}
    for i, entry in enumerate(data):
        where = f"{path}:{lines[i]}"
        grants.append(_grant(entry, where))
        if grants[-1].sha256 in seen:
            raise ConfigError(f"{where}: sha256: the same key as {seen[grants[-1].sha256]}'s entry")
        seen[grants[-1].sha256] = grants[-1].name
    return Keys(grants)


def _grant(entry: object, where: str) -> Grant:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each key is a mapping with name, sha256 and adapters")
    unknown = sorted(set(map(str, entry)) - FIELDS)
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown field (known: {', '.join(sorted(FIELDS))})")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: name: give who holds this key")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not HEX64.match(digest.lower()):
        raise ConfigError(f"{where}: sha256: must be the key's sha256, 64 hex digits (bapo keys add writes it)")
    adapters = entry.get("adapters", [])
    if isinstance(adapters, str):
        adapters = [adapters]
    if not isinstance(adapters, list) or not all(isinstance(a, str) and PATTERN.match(a) for a in adapters):
        raise ConfigError(f"{where}: adapters: a list of adapter names or patterns such as alice-* (letters, digits, "
                          f". _ - and * ? [ ] only)")
    base = entry.get("base", True)
    if not isinstance(base, bool):
        raise ConfigError(f"{where}: base: true or false")
    if not adapters and not base:
        raise ConfigError(f"{where}: this key may use nothing (no adapters, base: false)")
    return Grant(name.strip(), digest.lower(), tuple(adapters), base)


def add_key(path: str | Path, name: str, adapters: list[str], base: bool = True) -> str:
    """A new random key for ``name``, its hash appended to the keys file at ``path`` (created if missing, checked
    first, rewritten atomically); the key is returned and stored nowhere."""
    path = Path(path)
    keys = load_keys(path) if path.exists() else Keys()
    key = "bapo-" + secrets.token_urlsafe(32)
    grant = _grant({"name": name, "sha256": key_hash(key), "adapters": adapters, "base": base}, "new key")
    entries = [{"name": g.name, "sha256": g.sha256, "adapters": list(g.adapters), "base": g.base}
               for g in [*keys.grants, grant]]
    head = "# bapo serve --keys: who may use which adapters. Keys are stored as sha256 only.\n"
    atomic_write_text(path, head + yaml.safe_dump(entries, sort_keys=False, default_flow_style=None))
    return key
