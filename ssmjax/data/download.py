"""Downloading and unpacking dataset files: mirrors, resume, checksums, streaming tar.

Only the standard library (``urllib.request``, ``hashlib``, ``tarfile``) and ``tqdm``
are used. The rules every loader relies on:

* a download streams to ``dest + ".part"`` and is renamed to ``dest`` only after its
  size and checksum have been verified, so ``dest`` is either absent or complete;
* an interrupted download resumes from the ``.part`` file with an HTTP ``Range``
  request, and starts again from zero when the server ignores the range;
* a file that fails its checksum is kept as ``dest + ".corrupt"`` (nothing is deleted)
  and the error names the file, the expected and the actual digest;
* when every mirror fails, one error lists each mirror with its reason and says where
  to put the file by hand.
"""

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

__all__ = [
    "ChecksumError",
    "DownloadError",
    "download",
    "extract_members",
    "file_digest",
    "verify",
]

_CHUNK = 1 << 20
_USER_AGENT = "ssmjax-data/0.1 (+urllib)"


class DownloadError(OSError):
    """No mirror could deliver a file (network errors, HTTP errors, bad content)."""


class ChecksumError(DownloadError, ValueError):
    """A file's size or digest differs from the expected value."""


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks.

    Args:
      path: the file.
      algorithm: any ``hashlib`` name (``"sha256"``, ``"md5"``, ...).

    Returns:
      The lowercase hex digest.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "x"
    ...     _ = p.write_bytes(b"abc")
    ...     file_digest(p, "md5")
    '900150983cd24fb0d6963f7d28e17f72'
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    out = {}
    if sha256:
        out["sha256"] = sha256.lower()
    if md5:
        out["md5"] = md5.lower()
    return out


def _mismatch(
    path: Path, size: int | None, expected: dict[str, str], actual: dict[str, str]
) -> str | None:
    """A description of the first size/digest mismatch, or ``None`` when all match."""
    real_size = path.stat().st_size
    if size is not None and real_size != size:
        return f"size mismatch for {path.name}: expected {size} bytes, got {real_size} bytes"
    for algo, want in expected.items():
        if actual[algo] != want:
            return f"{algo} mismatch for {path.name}: expected {want}, got {actual[algo]}"
    return None


def verify(
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
) -> Path:
    """Checks a file's size and digests; raises :class:`ChecksumError` on a mismatch.

    Args:
      path: the file.
      sha256: expected hex SHA-256, or ``None`` to skip.
      md5: expected hex MD5, or ``None`` to skip.
      size: expected size in bytes, or ``None`` to skip.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      FileNotFoundError: the file does not exist.
      ChecksumError: the size or a digest differs; the message gives both values.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "x"
    ...     _ = p.write_bytes(b"abc")
    ...     _ = verify(p, md5="900150983cd24fb0d6963f7d28e17f72", size=3)
    ...     verify(p, size=4)
    Traceback (most recent call last):
    ...
    ssmjax.data.download.ChecksumError: size mismatch for x: expected 4 bytes, got 3 bytes
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    expected = _expected(sha256, md5)
    actual = {algo: file_digest(path, algo) for algo in expected}
    if (msg := _mismatch(path, size, expected, actual)) is not None:
        raise ChecksumError(msg)
    return path


def _hash_prefix(path: Path, algos: Iterable[str]) -> dict:
    hashers = {a: hashlib.new(a) for a in algos}
    if hashers:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                for h in hashers.values():
                    h.update(chunk)
    return hashers


def _fetch(
    url: str, part: Path, *, size: int | None, algos: list[str], progress: bool, timeout: float
) -> tuple[dict[str, str], bool]:
    """Streams ``url`` into ``part``, resuming it when possible.

    Returns:
      The digests of the whole ``part`` file, and whether an earlier partial file was
      kept (resumed) rather than downloaded again from the start.
    """
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # a stale, longer partial file: start again
        offset = 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # range not satisfiable: the part may be complete
            return {a: h.hexdigest() for a, h in _hash_prefix(part, algos).items()}, True
        raise
    with response:
        status = getattr(response, "status", None)
        if offset and status != 206:  # the server (or file://) ignored the range
            offset = 0
        if offset:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise DownloadError(f"unexpected Content-Range {content_range!r} from {url}")
        length = response.headers.get("Content-Length")
        total = size if size is not None else (offset + int(length) if length else None)
        hashers = _hash_prefix(part, algos) if offset else {a: hashlib.new(a) for a in algos}
        with (
            open(part, "ab" if offset else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
                bar.update(len(chunk))
    return {a: h.hexdigest() for a, h in hashers.items()}, offset > 0


def download(
    url_or_mirrors: str | Sequence[str],
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Downloads a file from the first mirror that delivers it intact.

    The data stream to ``dest + ".part"``; an existing ``.part`` file is resumed with an
    HTTP ``Range`` request (restarted from zero when the server answers the whole file,
    and fetched once more from zero when the resumed file fails its checksum).
    After the transfer the size and digests are checked, and only then is the file
    renamed to ``dest`` (atomic on one file system). When ``dest`` already exists and
    matches the given size/digests (or none are given), nothing is downloaded; when it
    does not match, it is moved aside to ``dest + ".corrupt"`` and downloaded again.

    Any ``urllib`` URL works: ``https://``, ``http://`` and ``file://`` (useful for tests
    and for a copy on a shared disk).

    Args:
      url_or_mirrors: one URL or a sequence of mirror URLs, tried in order.
      dest: where the file is stored; its parent folder is created.
      sha256: expected hex SHA-256 (recommended), or ``None``.
      md5: expected hex MD5, or ``None``.
      size: expected size in bytes, or ``None``.
      progress: show a tqdm progress bar.
      timeout: seconds a connection may stall before a mirror is given up.

    Returns:
      ``dest`` as a :class:`~pathlib.Path`.

    Raises:
      ChecksumError: the file arrived but its size or digest is wrong (from every mirror
        that delivered it). The bad copy is kept as ``dest + ".corrupt"``.
      DownloadError: no mirror could be reached; the message lists each mirror and its
        error and says where to place the file by hand.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     src = Path(d) / "src.txt"
    ...     _ = src.write_text("hello")
    ...     out = download(src.as_uri(), Path(d) / "out.txt", size=5, progress=False)
    ...     out.read_text()
    'hello'
    """
    mirrors = [url_or_mirrors] if isinstance(url_or_mirrors, str) else list(url_or_mirrors)
    if not mirrors:
        raise ValueError("download() needs at least one URL")
    dest = Path(dest)
    expected = _expected(sha256, md5)
    if dest.exists():
        if not expected and size is None:
            return dest
        actual = {a: file_digest(dest, a) for a in expected}
        if _mismatch(dest, size, expected, actual) is None:
            return dest
        os.replace(dest, _corrupt_name(dest))  # keep the user's file, out of the way
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    corrupt = dest
    failures: list[str] = []
    checksum_failures: list[str] = []
    for url in mirrors:
        for _ in range(2):  # a resumed file that fails its check is fetched once more whole
            try:
                actual, resumed = _fetch(
                    url, part, size=size, algos=list(expected), progress=progress, timeout=timeout
                )
            except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts
                failures.append(f"  - {url}: {_reason(e)}")
                break
            msg = _mismatch(part, size, expected, actual)
            if msg is None:
                os.replace(part, dest)
                return dest
            corrupt = _corrupt_name(dest)
            os.replace(part, corrupt)
            checksum_failures.append(f"  - {url}: {msg}; kept as {corrupt}")
            if not resumed:
                break
    tried = "\n".join(failures + checksum_failures)
    digests = ", ".join(f"{a} {v}" for a, v in expected.items()) or "no checksum given"
    manual = (
        f"To install it by hand, download it on a machine with network access and copy it "
        f"to\n  {dest}\n({digests}{f', {size} bytes' if size is not None else ''})."
    )
    if checksum_failures:
        raise ChecksumError(
            f"{dest.name}: the downloaded file does not match its checksum (the bad copy is "
            f"kept as {corrupt}).\nMirrors tried:\n{tried}\n{manual}"
        )
    raise DownloadError(
        f"could not download {dest.name}: no mirror was reachable (is this machine "
        f"offline?).\nMirrors tried:\n{tried}\n{manual}"
    )


def _corrupt_name(dest: Path) -> Path:
    """``dest.corrupt``, or ``dest.corrupt.N`` when that name is taken (nothing is overwritten)."""
    candidate = dest.with_name(dest.name + ".corrupt")
    n = 0
    while candidate.exists():
        n += 1
        candidate = dest.with_name(f"{dest.name}.corrupt.{n}")
    return candidate


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"{type(e.reason).__name__}: {e.reason}"
    return f"{type(e).__name__}: {e}"


def _member_matcher(members_filter) -> Callable[[str], bool]:
    if callable(members_filter):
        return members_filter
    fragments = [members_filter] if isinstance(members_filter, str) else list(members_filter)
    fragments = ["/" + f.strip("/") + "/" for f in fragments]

    def match(name: str) -> bool:
        padded = "/" + name.strip("/") + "/"
        return any(f in padded for f in fragments)

    return match


class _CountingReader:
    """A read-only file wrapper that advances a progress bar by the bytes read."""

    def __init__(self, f, bar):
        self._f, self._bar = f, bar

    def read(self, n=-1):
        data = self._f.read(n)
        self._bar.update(len(data))
        return data


def extract_members(
    tar_path: str | os.PathLike,
    members_filter: str | Sequence[str] | Callable[[str], bool],
    dest: str | os.PathLike,
    *,
    progress: bool = True,
) -> list[Path]:
    """Extracts the matching members of a (compressed) tar archive in one streaming pass.

    The archive is read sequentially (``tarfile`` stream mode, compression detected), so
    a multi-GB ``lra_release.gz`` is never loaded into memory and only the selected
    members reach the disk. Extraction uses tarfile's ``"data"`` filter: absolute
    paths, ``..`` components, links leaving ``dest`` and device files are refused.

    Args:
      tar_path: the archive (``.tar``, ``.tar.gz``/``.gz``, ``.tar.bz2``, ``.tar.xz``).
      members_filter: which members to extract: a callable on the member name, or a
        path fragment (or several) matched against whole path components, e.g.
        ``"listops-1000"`` matches ``lra_release/lra_release/listops-1000/basic_val.tsv``
        and ``"lra_release/lra_release/pathfinder32/curv_contour_length_14"`` one folder.
      dest: the folder the member paths are extracted under (created).
      progress: show a tqdm bar over the archive's bytes.

    Returns:
      The paths of the extracted regular files, in archive order.

    >>> import io, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with tarfile.open(Path(d) / "a.tar.gz", "w:gz") as t:
    ...         for name in ["r/listops-1000/a.tsv", "r/tsv_data/b.tsv"]:
    ...             info = tarfile.TarInfo(name); info.size = 2
    ...             t.addfile(info, io.BytesIO(b"hi"))
    ...     out = extract_members(Path(d) / "a.tar.gz", "listops-1000", Path(d) / "x",
    ...                           progress=False)
    ...     [p.relative_to(Path(d) / "x").as_posix() for p in out]
    ['r/listops-1000/a.tsv']
    """
    tar_path, dest = Path(tar_path), Path(dest)
    match = _member_matcher(members_filter)
    dest.mkdir(parents=True, exist_ok=True)
    extracted: list[Path] = []
    with (
        open(tar_path, "rb") as raw,
        tqdm(
            total=tar_path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"scanning {tar_path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
        tarfile.open(fileobj=_CountingReader(raw, bar), mode="r|*") as tar,
    ):
        for member in tar:
            if not match(member.name):
                continue
            if member.isfile():
                target = dest / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                tar.extract(member, dest, filter="data")
                extracted.append(target)
            elif member.isdir():
                tar.extract(member, dest, filter="data")
            # links and special files are skipped: a streamed archive cannot seek back
            # to a link's target, and the datasets contain none
    return extracted
