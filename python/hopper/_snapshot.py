"""A deploy's code snapshot: the app's folder as one gzip-compressed tar, named by the SHA-256
of its bytes, as ``hopper deploy`` builds it (see the README's "Versions, code and secrets").

Every file under the folder is shipped but what ``.gitignore`` and ``.hopperignore`` files
(gitignore syntax, in any folder) exclude, what never belongs in code (:data:`LEFT_OUT_BY_DEFAULT`
and virtual environments: any folder holding ``pyvenv.cfg``; a negation such as
``!node_modules/`` in the folder's own ``.hopperignore`` or ``.gitignore`` ships one anyway), and
``.hopper``. The tar is written deterministically (sorted paths, no times or owners), so
unchanged code gives the same hash and the server stores nothing new.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass

import pathspec

#: Folders never shipped: Hopper's own.
ALWAYS_LEFT_OUT = frozenset({".hopper"})
#: Folders left out wherever they are, as gitignore patterns, unless the root folder's
#: ``.gitignore`` or ``.hopperignore`` negates one. Virtual environments (folders holding
#: ``pyvenv.cfg``) are left out the same way, whatever their name.
LEFT_OUT_BY_DEFAULT = (
    ".git/",
    "__pycache__/",
    "node_modules/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".tox/",
)
#: The default most bytes of files a snapshot may hold, before compression: 64 MiB.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_IGNORE_FILES = (".gitignore", ".hopperignore")


class SnapshotError(ValueError):
    """The folder cannot be shipped as it is; the message says why and what to do."""


class SnapshotTooLarge(SnapshotError):
    """The folder holds more than the limit; the message names the biggest files."""


def _is_data_folder(path: str) -> bool:
    """A Hopper server's data folder (its database, maybe its secrets' key): never code."""
    return os.path.exists(os.path.join(path, "hopper.lock")) or os.path.exists(
        os.path.join(path, "hopper.db")
    )


def _escapes(root: str, link: str) -> str | None:
    """The link's target if it leaves ``root``: absolute, or climbing above it with ``..`` at
    any point, even to come back in (``../app/data``), as the server checks it."""
    target = os.readlink(link)
    if os.path.isabs(target):
        return target
    depth = len(os.path.relpath(link, root).split(os.sep)) - 1
    for part in target.split(os.sep):
        if part == "..":
            depth -= 1
        elif part not in ("", "."):
            depth += 1
        if depth < 0:
            return target
    return None


@dataclass(frozen=True)
class Bundle:
    """A folder packed for a deploy.

    Attributes:
        data: the gzip-compressed tar.
        hash: ``sha256:`` and the hex digest of ``data``.
        files: how many files it holds.
    """

    data: bytes
    hash: str
    files: int


def _ignored(specs: list[tuple[str, pathspec.GitIgnoreSpec]], path: str, is_dir: bool) -> bool:
    for base, spec in specs:
        relative = os.path.relpath(path, base).replace(os.sep, "/")
        if spec.match_file(relative + ("/" if is_dir else "")):
            return True
    return False


def _ignore_lines(folder: str) -> list[str]:
    """The lines of the folder's ``.gitignore`` then ``.hopperignore`` (the later wins)."""
    lines: list[str] = []
    for name in _IGNORE_FILES:
        try:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                lines.extend(f.read().splitlines())
        except OSError:
            continue
    return lines


def _is_venv(path: str) -> bool:
    """A Python virtual environment (``python -m venv``, virtualenv, uv, conda's ``venv``)."""
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def _shipped_anyway(root_lines: list[str], relative: str) -> bool:
    """Whether the root folder's ignore files negate leaving out the folder ``relative``."""
    spec = pathspec.GitIgnoreSpec.from_lines([f"/{relative}/", *root_lines])
    return not spec.match_file(relative + "/")


def _walks_into(
    root: str, root_lines: list[str], specs: list[tuple[str, pathspec.GitIgnoreSpec]], full: str
) -> bool:
    """Whether the snapshot looks inside the folder ``full``."""
    if os.path.basename(full) in ALWAYS_LEFT_OUT or os.path.islink(full) or _is_data_folder(full):
        return False
    relative = os.path.relpath(full, root).replace(os.sep, "/")
    if _is_venv(full) and not _shipped_anyway(root_lines, relative):
        return False
    return not _ignored(specs, full, True)


def collect(root: str, max_bytes: int = DEFAULT_MAX_BYTES) -> list[tuple[str, str]]:
    """The files of ``root`` a snapshot ships, as ``(path inside the snapshot, path here)``.

    Raises:
        SnapshotTooLarge: the files hold more than ``max_bytes``.
        SnapshotError: a link points outside ``root``.
    """
    found: list[tuple[str, str]] = []
    sizes: list[tuple[int, str]] = []
    specs_by_dir: dict[str, list[tuple[str, pathspec.GitIgnoreSpec]]] = {}
    root_lines = _ignore_lines(root)
    for folder, dirs, names in os.walk(root):
        parent = specs_by_dir.get(os.path.dirname(folder), [])
        if folder == root:
            # The defaults first, so the root's own lines can negate them.
            own: pathspec.GitIgnoreSpec | None = pathspec.GitIgnoreSpec.from_lines(
                [*LEFT_OUT_BY_DEFAULT, *root_lines]
            )
        else:
            lines = _ignore_lines(folder)
            own = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
        specs = parent + ([(folder, own)] if own is not None else [])
        specs_by_dir[folder] = specs

        dirs[:] = sorted(d for d in dirs if _walks_into(root, root_lines, specs, os.path.join(folder, d)))
        # A link to a folder is shipped as the link.
        links = [d for d in os.listdir(folder) if os.path.islink(os.path.join(folder, d))]
        for name in sorted(set(names) | set(links)):
            full = os.path.join(folder, name)
            if _ignored(specs, full, False):
                continue
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            if os.path.islink(full):
                target = _escapes(root, full)
                if target is not None:
                    where = "outside" if os.path.isabs(target) else "climbing out of"
                    raise SnapshotError(
                        f"{relative} is a link to {target}, {where} {root}: on another machine it "
                        f"would point elsewhere or nowhere. Leave it out with a line '/{relative}' in "
                        f"{os.path.join(root, '.hopperignore')}, or copy what it points to into the folder"
                    )
            size = 0 if os.path.islink(full) else os.path.getsize(full)
            found.append((relative, full))
            sizes.append((size, relative))
    total = sum(size for size, _ in sizes)
    if total > max_bytes:
        biggest = ", ".join(f"{p} ({s / 1048576:.1f} MiB)" for s, p in sorted(sizes, reverse=True)[:5])
        raise SnapshotTooLarge(
            f"the code snapshot of {root} would hold {total / 1048576:.1f} MiB of files, over the "
            f"{max_bytes / 1048576:.1f} MiB limit; the biggest: {biggest}. Leave files out with a "
            ".hopperignore (gitignore syntax)"
        )
    return found


def build(
    root: str, max_bytes: int = DEFAULT_MAX_BYTES, extra: list[tuple[str, str]] | None = None
) -> Bundle:
    """Packs ``root`` for a deploy, with the files ``extra`` (``(path inside the snapshot, path
    here)``, e.g. the SDK under ``.hopper/``) besides, not counted in ``max_bytes`` nor in
    :attr:`Bundle.files`.

    Raises:
        SnapshotTooLarge: the files hold more than ``max_bytes``.
        SnapshotError: a link points outside ``root``.
        OSError: a file could not be read.
    """
    own = collect(root, max_bytes)
    files = sorted(own + list(extra or []))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for relative, full in files:
            st = os.lstat(full)
            info = tarfile.TarInfo(relative)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                info.mode = 0o777
                tar.addfile(info)
                continue
            info.size = st.st_size
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            with open(full, "rb") as f:
                tar.addfile(info, f)
    data = gzip.compress(raw.getvalue(), mtime=0)
    regular = sum(1 for _, full in own if not os.path.islink(full))
    return Bundle(data=data, hash="sha256:" + hashlib.sha256(data).hexdigest(), files=regular)
