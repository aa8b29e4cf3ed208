"""Path safety and atomic writes, used wherever a path comes from data or a file is written.

- ``safe_name`` turns any text (a checkpoint label, an identity from a JSON file) into one harmless
  file-name component: no separators, no ``..``, no hidden names, no control characters.
- ``missing_reason`` says why a path cannot be opened (a symlink loop is not "no such file").
- ``confined(root, relative)`` joins and resolves a path and refuses it unless it stays inside
  ``root`` (absolute paths, ``..`` and symlinks pointing out are all refused).
- ``atomic_write_*`` / ``atomic_output``: a temporary file in the same folder, then a rename, so a
  reader sees the old file or the new one, never half of one.
- ``check_output_file`` / ``check_output_folder``: refuse an unusable output (wrong format,
  unwritable folder) before long work starts rather than after it.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imface.errors import UserError

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
MAX_NAME = 120


def safe_name(text: object, fallback: str = "unnamed") -> str:
    """One file-name component made of letters, digits and ``._+-``; never empty, never hidden."""
    name = _UNSAFE.sub("_", str(text)).lstrip(".")[:MAX_NAME]
    return name if name.strip("._-") else fallback


def missing_reason(path: str | Path) -> str:
    """Why a path cannot be opened, in words ('no such file', 'a symlink loop', ...)."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop (too many levels of symbolic links)"
        if exc.errno == errno.EACCES:
            return "permission denied"
        if exc.errno == errno.ENOENT:
            return "no such file" if not os.path.islink(path) else "a broken symlink"
        return exc.strerror or str(exc)
    return "exists"


def confined(root: str | Path, relative: str | Path) -> Path:
    """root / relative, resolved; UserError unless the result lies inside root (root itself is
    refused too: a name from data must never stand for the whole folder)."""
    root_path = Path(root)
    rel = Path(relative)
    if rel.is_absolute():
        raise UserError(f"{relative!s:.80}: an absolute path where a path inside {root_path} is expected")
    try:
        base = root_path.resolve()
        target = (base / rel).resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: a symlink loop
        raise UserError(f"{root_path / rel}: cannot resolve the path ({exc})") from None
    if target == base:
        raise UserError(f"{relative!s:.80}: names {root_path} itself, not a path inside it; refused")
    if base not in target.parents:
        raise UserError(f"{relative!s:.80}: leads outside {root_path}; refused")
    return target


# -- atomic writes ------------------------------------------------------------------------------
@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffix, so writers that pick the format by the
    suffix still work); on success it replaces `path`, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _new_temporary(path: Path) -> Path:
    # os.open with mode 0o666 honours the umask (mkstemp's 0o600 would leak into the result)
    for _ in range(100):
        tmp = path.with_name(f".{path.stem[:60]}.{secrets.token_hex(4)}.part{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise UserError(f"{path.parent}: cannot create a temporary file there")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# -- output checks before long work ----------------------------------------------------------------
def check_output_file(path: str | Path, formats: tuple[str, ...] | None = None) -> Path:
    """Refuse an output file that could not be written: a format not in `formats`, a folder in its
    place, or a folder that cannot hold new files. Creates the parent folder."""
    path = Path(path)
    if formats is not None and path.suffix.lower() not in formats:
        raise UserError(
            f"{path}: unsupported output format {path.suffix or '(none)'!r} (use {', '.join(formats)})"
        )
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name")
    try:
        _probe(path.parent)
    except OSError as exc:
        raise UserError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    return path


def check_output_folder(folder: str | Path) -> Path:
    """Create `folder` if needed and prove it accepts new files."""
    folder = Path(folder)
    try:
        _probe(folder)
    except OSError as exc:
        raise UserError(f"{folder}: cannot write there ({exc.strerror or exc})") from None
    return folder


def _probe(folder: Path) -> None:
    # a real file created and removed at once: permissions, read-only mounts and /proc all show
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".imface-probe-"):
        pass
