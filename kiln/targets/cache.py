"""A content-addressed build cache: same inputs (sources, flags, compiler) → same entry.

An entry is a directory `<root>/<key[:2]>/<key>/` holding whatever the build wrote (library,
log, sources) and a `COMPLETE` marker. Builds happen in a temporary directory beside it that
is renamed into place only when finished, so a crash or a concurrent build never leaves a
half-written entry; a failed build's directory moves to `<root>/failed/<key>/` so its log
stays readable. The root comes from the caller (`cache_dir` option, default `~/.cache/kiln`):
the library reads no environment variables.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from kiln.targets.toolchains.gcc import CompileError

MARKER = "COMPLETE"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "kiln"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_key(*parts: bytes | str) -> str:
    """SHA-256 over the length-prefixed parts (so no two part lists collide)."""
    digest = hashlib.sha256()
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


class BuildCache:
    """Entries under `root` (see the module docstring)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> Path | None:
        """The finished entry for `key`, or None."""
        entry = self.path(key)
        return entry if (entry / MARKER).is_file() else None

    def store(self, key: str, build: Callable[[Path], None]) -> Path:
        """Run `build(directory)` in a fresh directory and publish it as the entry for `key`."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            build(work)
        except CompileError as exc:
            raise CompileError(str(exc.diagnostics[0].message),
                               self._keep_failed(key, work) / exc.log.name) from None
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        (work / MARKER).write_text(key + "\n")
        try:
            os.replace(work, final)
        except OSError:  # another build published the same entry first: keep that one
            shutil.rmtree(work, ignore_errors=True)
        return final

    def _keep_failed(self, key: str, work: Path) -> Path:
        failed = self.root / "failed" / key
        shutil.rmtree(failed, ignore_errors=True)
        failed.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, failed)
        return failed
