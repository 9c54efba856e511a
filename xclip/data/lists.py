"""Video lists and label sets.

The official list format (microsoft/VideoX X-CLIP, mmaction2 "VideoDataset")
has one sample per line::

    relative/path/to/video.mp4 <label id>

Paths may contain spaces (the label is the last whitespace-separated field).
Blank lines and lines starting with ``#`` are ignored.

Label sets are either a CSV file with ``id,name`` rows (an optional header
``id,name`` is skipped; ids must be 0..K-1, in any order) or a plain
comma-separated string ``"a,b,c"``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence

__all__ = ["read_video_list", "read_labels", "write_video_list", "parse_video_list", "check_list_labels"]


def _text_lines(path: str, what: str) -> list[str]:
    """The lines of a UTF-8 text file; a ValueError naming the file and line if it is not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{what} {path!r} could not be read: {e.strerror or e}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # UTF-8 byte-order mark
    lines = data.decode("utf-8", errors="surrogateescape").splitlines()
    for lineno, line in enumerate(lines, start=1):
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} {path!r}, line {lineno}: not valid UTF-8 text (save the file as UTF-8)") from None
    return lines


def parse_video_list(list_file: str | os.PathLike, root: str | os.PathLike | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
    """Like :func:`read_video_list`, but ``root=None`` keeps paths as written (``allow_empty``: no error
    for a list without samples)."""
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise ValueError(f"video list {list_file!r} does not exist or is not a file")
    items: list[tuple[str, int]] = []
    for lineno, raw in enumerate(_text_lines(list_file, "video list"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise ValueError(
                f"{list_file}, line {lineno}: expected '<relative path> <label id>', got {line!r}"
            )
        rel, lab = parts
        try:
            label = int(lab)
        except ValueError:
            raise ValueError(
                f"{list_file}, line {lineno}: label {lab!r} is not an integer (line {line!r})"
            ) from None
        if label < 0:
            raise ValueError(f"{list_file}, line {lineno}: label {label} is negative (line {line!r})")
        path = rel if root is None else os.path.abspath(os.path.join(os.fspath(root), rel))
        items.append((path, label))
    if not items and not allow_empty:
        raise ValueError(f"video list {list_file!r} contains no samples")
    return items


def check_list_labels(source, num_classes: int, labels: str = "the labels", what: str = "video list") -> None:
    """Every label of a video list (a file or ``[(path, label)]``) is a class id below ``num_classes``.

    Raises ``ValueError`` naming the list file, the line (or item) and the id,
    so a bad id stops a run before its first step instead of mid-epoch.
    """
    n = int(num_classes)
    if isinstance(source, (str, os.PathLike)):
        list_file = os.fspath(source)
        # format errors first (missing file, bad line, not UTF-8); an empty list is reported where it is read
        parse_video_list(list_file, allow_empty=True)
        for lineno, raw in enumerate(_text_lines(list_file, what), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            label = int(line.rsplit(None, 1)[1])
            if label >= n:
                raise ValueError(f"{what} {list_file}, line {lineno}: label id {label} but {labels} has {n} "
                                 f"class(es) (ids 0..{n - 1})")
        return
    for k, item in enumerate(source):
        label = int(item[1])
        if not 0 <= label < n:
            raise ValueError(f"{what}, item {k} ({item[0]}): label id {label} but {labels} has {n} class(es) "
                             f"(ids 0..{n - 1})")


def read_video_list(list_file: str | os.PathLike, root: str | os.PathLike) -> list[tuple[str, int]]:
    """Parse an official-format list into ``[(absolute_path, label), ...]``.

    Raises ``ValueError`` naming the file and the line for a malformed line
    (missing label, non-integer or negative label), and for an empty or
    missing list file. File existence is *not* checked here (see
    :class:`xclip.data.VideoDataset`, which reports missing files up front).
    """
    if root is None:
        raise ValueError("read_video_list: root must be a folder path, got None")
    return parse_video_list(list_file, root)


def write_video_list(items: Iterable[tuple[str, int]], list_file: str | os.PathLike,
                     root: str | os.PathLike | None = None) -> None:
    """Write ``[(path, label)]`` in the official format (paths relative to ``root`` if given)."""
    with open(list_file, "w", encoding="utf-8") as f:
        for path, label in items:
            p = os.path.relpath(path, root) if root is not None else path
            f.write(f"{p} {int(label)}\n")


def _labels_from_csv(path: str) -> list[str]:
    text = "\n".join(_text_lines(path, "labels file"))
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"labels file {path!r} is empty")
    first = [c.strip().lower() for c in rows[0]]
    if len(first) >= 2 and not first[0].lstrip("-").isdigit():
        rows = rows[1:]  # header such as "id,name"
    by_id: dict[int, str] = {}
    for lineno, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise ValueError(f"labels file {path!r}: row {row!r} is not 'id,name'")
        try:
            idx = int(row[0].strip())
        except ValueError:
            raise ValueError(f"labels file {path!r}: id {row[0]!r} in row {row!r} is not an integer") from None
        name = ",".join(row[1:]).strip()  # tolerate unquoted commas in names
        if not name:
            raise ValueError(f"labels file {path!r}: empty name for id {idx}")
        if idx in by_id:
            raise ValueError(f"labels file {path!r}: id {idx} appears twice")
        by_id[idx] = name
    ids = sorted(by_id)
    if ids != list(range(len(ids))):
        missing = sorted(set(range(max(ids) + 1)) - set(ids))[:10]
        raise ValueError(f"labels file {path!r}: ids must be 0..{len(ids) - 1} without gaps; missing {missing}")
    return [by_id[i] for i in ids]


def read_labels(path_or_commalist: str | os.PathLike | Sequence[str]) -> list[str]:
    """Class names from a labels CSV (``id,name``, optional header) or ``"a,b,c"``.

    A list/tuple of names is returned as a list unchanged (after validation).
    """
    if isinstance(path_or_commalist, (list, tuple)):
        names = [str(n).strip() for n in path_or_commalist]
    else:
        s = os.fspath(path_or_commalist)
        if os.path.isfile(s):
            names = _labels_from_csv(s)
        elif s.lower().endswith((".csv", ".txt")) and "," not in s:
            raise ValueError(f"labels file {s!r} does not exist")
        else:
            names = [n.strip() for n in s.split(",")]
    if not names or any(not n for n in names):
        raise ValueError(f"labels {path_or_commalist!r}: empty class name in the list")
    return names
