"""A content-addressed build cache: same inputs (sources, flags, compiler) → same entry.

An entry is a directory `<root>/<key[:2]>/<key>/` holding whatever the build wrote (library,
log, sources), a `MANIFEST` (size and SHA-256 of every file) and a `COMPLETE` marker (the key
and the manifest's own SHA-256). Builds happen in a temporary directory beside it that is
renamed into place only when finished, so a crash or a concurrent build never leaves a
half-written entry; a failed build's directory moves to `<root>/failed/<key>/` so its log
stays readable, and is never looked up.

Every `lookup` verifies the entry against its manifest (hashing a few-MB library is cheap next
to loading it): a truncated or edited file, a missing file, or a marker that does not belong
to the entry (a stale `COMPLETE`) makes the entry invalid; it is moved aside under a per-key
lock and rebuilt, so a damaged cache costs one build, never a wrong result. Only the moves that
publish or remove an entry take the lock; builds run unlocked (two processes may build the
same key at once, the first rename wins and the other uses the winner's entry).

The root comes from the caller (`cache_dir` option, default `~/.cache/kiln`): the library
reads no environment variables.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from kiln.errors import KilnError
from kiln.targets.toolchains.gcc import CompileError

MARKER = "COMPLETE"
MANIFEST = "MANIFEST"
logger = logging.getLogger("kiln.targets.cache")


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_of(directory: Path) -> dict[str, list[int | str]]:
    """Relative path → [size, sha256] of every file under `directory` but the bookkeeping."""
    out: dict[str, list[int | str]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel not in (MARKER, MANIFEST):
            out[rel] = [path.stat().st_size, file_sha256(path)]
    return out


def seal(directory: Path, key: str) -> None:
    """Write the manifest of a finished build, then its marker (the last file written)."""
    text = json.dumps(manifest_of(directory), indent=0, sort_keys=True)
    (directory / MANIFEST).write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    (directory / MARKER).write_text(f"{key}\n{digest}\n")


def problem(entry: Path, key: str) -> str | None:
    """Why `entry` is not a valid entry for `key` (None when it is)."""
    try:
        marker = (entry / MARKER).read_text().split()
        text = (entry / MANIFEST).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return f"unreadable bookkeeping ({exc.__class__.__name__})"
    if marker != [key, hashlib.sha256(text.encode()).hexdigest()]:
        return "its COMPLETE marker does not match its key and manifest"
    try:
        files = json.loads(text)
        for rel, (size, digest) in sorted(files.items()):
            path = entry / rel
            if not path.is_file():
                return f"{rel} is missing"
            if path.stat().st_size != size:
                return f"{rel} has {path.stat().st_size} bytes, {size} were built"
            if file_sha256(path) != digest:
                return f"{rel} changed since it was built (checksum mismatch)"
    except (ValueError, TypeError, AttributeError, OSError) as exc:
        return f"its manifest is malformed ({exc.__class__.__name__})"
    return None


class BuildCache:
    """Entries under `root` (see the module docstring)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> Path | None:
        """The finished, verified entry for `key`, or None (an invalid one is moved aside)."""
        entry = self.path(key)
        if not entry.exists():
            return None
        why = problem(entry, key)
        if why is None:
            return entry
        with self._locked(key):
            if entry.exists() and problem(entry, key) is not None:
                logger.warning("kiln cache: rebuilding %s: %s", entry, why)
                self._discard(entry)
        return None

    def store(self, key: str, build: Callable[[Path], None],
              outputs: Sequence[str] = ()) -> Path:
        """Run `build(directory)` in a fresh directory and publish it as the entry for `key`.

        `outputs` are files the build must leave non-empty: a build that returns without them
        (a killed compiler, a build function with a bug) is an error, never an entry.
        """
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            build(work)
            _check_outputs(work, outputs)
            seal(work, key)
        except CompileError as exc:
            kept = self._keep_failed(key, work)
            # A log written in this build's directory moved with it; one from a nested entry
            # (a runtime object the build needed, kept under its own key) stays where it is.
            log = kept / exc.log.relative_to(work) if exc.log.is_relative_to(work) else exc.log
            raise CompileError(str(exc.diagnostics[0].message), log) from None
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        with self._locked(key):
            if final.exists() and problem(final, key) is not None:
                self._discard(final)
            try:
                os.replace(work, final)
            except OSError:  # another build published a valid entry first: keep that one
                shutil.rmtree(work, ignore_errors=True)
        return final

    def get(self, key: str, build: Callable[[Path], None], outputs: Sequence[str] = ()) -> Path:
        """The verified entry for `key`, built first when missing or invalid."""
        return self.lookup(key) or self.store(key, build, outputs)

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """An exclusive lock on `key` between processes (flock on a file beside the entry)."""
        lock = self.root / key[:2] / f".{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _discard(self, entry: Path) -> None:
        """Move an invalid entry out of the way (atomically), then delete it."""
        trash = Path(tempfile.mkdtemp(prefix=".invalid-", dir=entry.parent))
        with contextlib.suppress(FileNotFoundError):
            os.replace(entry, trash / "entry")
        shutil.rmtree(trash, ignore_errors=True)

    def _keep_failed(self, key: str, work: Path) -> Path:
        failed = self.root / "failed" / key
        shutil.rmtree(failed, ignore_errors=True)
        failed.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(work, failed)
        except OSError:  # a concurrent failure of the same build kept its log there first
            shutil.rmtree(work, ignore_errors=True)
        return failed


def _check_outputs(work: Path, outputs: Sequence[str]) -> None:
    missing = [name for name in outputs
               if not (work / name).is_file() or (work / name).stat().st_size == 0]
    if missing:
        raise KilnError(f"the build in {work} finished without {', '.join(missing)}",
                        hint="a compiler was probably killed; compile again")
