"""ssmjax.data.download: mirrors, resume, checksums, offline errors, streaming tar."""

import hashlib
import http.server
import io
import socket
import tarfile
import threading
import urllib.request

import pytest

from ssmjax.data.download import (
    ChecksumError,
    DownloadError,
    download,
    extract_members,
    file_digest,
    verify,
)

PAYLOAD = bytes(range(256)) * 4099  # ~1 MiB, not a multiple of the 1 MiB chunk


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "served" / "data.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


class _Server:
    """A loopback HTTP server for PAYLOAD, optionally honouring ``Range``."""

    def __init__(self, honour_range: bool):
        self.ranges: list[str | None] = []
        self.bytes_sent = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/data.bin":
                    self.send_error(404)
                    return
                requested = self.headers.get("Range")
                outer.ranges.append(requested)
                start = 0
                if honour_range and requested and requested.startswith("bytes="):
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
                    )
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.bytes_sent += len(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def test_file_url_download_verifies(source, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    out = download(
        source.as_uri(), dest, sha256=sha256(PAYLOAD), md5=hashlib.md5(PAYLOAD).hexdigest(),
        size=len(PAYLOAD), progress=False,
    )  # fmt: skip
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.bin.part").exists()
    verify(dest, sha256=sha256(PAYLOAD), size=len(PAYLOAD))
    assert file_digest(dest) == sha256(PAYLOAD)


def test_existing_verified_file_is_not_downloaded_again(source, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD)
    # the URL is unreachable: a download attempt would fail
    assert download("https://example.invalid/x", dest, sha256=sha256(PAYLOAD)) == dest


def test_checksum_mismatch_keeps_corrupt_copy(source, tmp_path):
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        download(source.as_uri(), dest, sha256=wrong, progress=False)
    message = str(info.value)
    assert "data.bin" in message and wrong in message and sha256(PAYLOAD) in message
    assert not dest.exists()
    corrupt = tmp_path / "data.bin.corrupt"
    assert corrupt.read_bytes() == PAYLOAD and str(corrupt) in message
    # a second failure keeps the first bad copy too
    with pytest.raises(ChecksumError):
        download(source.as_uri(), dest, sha256=wrong, progress=False)
    assert corrupt.exists() and (tmp_path / "data.bin.corrupt.1").exists()


def test_size_mismatch(source, tmp_path):
    with pytest.raises(ChecksumError, match="expected 12 bytes"):
        download(source.as_uri(), tmp_path / "d.bin", size=12, progress=False)


def test_wrong_existing_file_is_moved_aside_not_deleted(source, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"old user content")
    download(source.as_uri(), dest, sha256=sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "data.bin.corrupt").read_bytes() == b"old user content"


def test_mirror_fallback(source, tmp_path):
    missing = (tmp_path / "nowhere.bin").as_uri()
    dest = download([missing, source.as_uri()], tmp_path / "d.bin", size=len(PAYLOAD),
                    progress=False)  # fmt: skip
    assert dest.read_bytes() == PAYLOAD


def test_mirror_fallback_after_bad_checksum(source, tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not the data")
    dest = tmp_path / "d.bin"
    download([bad.as_uri(), source.as_uri()], dest, sha256=sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "d.bin.corrupt").read_bytes() == b"not the data"


def test_offline_error_lists_mirrors_and_manual_path(tmp_path):
    mirrors = ["https://storage.googleapis.com/long-range-arena/x.gz", "http://example.com/x.gz"]
    dest = tmp_path / "x.gz"
    with pytest.raises(DownloadError) as info:
        download(mirrors, dest, sha256="ab" * 32, progress=False)
    message = str(info.value)
    assert not isinstance(info.value, ChecksumError)
    for url in mirrors:
        assert url in message
    assert "network access blocked" in message  # the conftest guard answered
    assert str(dest) in message and "ab" * 32 in message and "by hand" in message
    assert not dest.exists()


def test_network_guard_blocks_but_allows_loopback():
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("192.0.2.1", 80), timeout=0.1)
    with _Server(honour_range=True) as server:
        assert urllib.request.urlopen(server.url, timeout=5).read() == PAYLOAD


def test_resume_with_range(tmp_path):
    dest = tmp_path / "d.bin"
    half = len(PAYLOAD) // 2 + 7
    dest.with_name("d.bin.part").write_bytes(PAYLOAD[:half])
    with _Server(honour_range=True) as server:
        download(server.url, dest, sha256=sha256(PAYLOAD), size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == [f"bytes={half}-"]
    assert server.bytes_sent == len(PAYLOAD) - half


def test_restart_when_server_ignores_range(tmp_path):
    dest = tmp_path / "d.bin"
    dest.with_name("d.bin.part").write_bytes(PAYLOAD[:1000])
    with _Server(honour_range=False) as server:
        download(server.url, dest, sha256=sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.bytes_sent == len(PAYLOAD)


def test_complete_part_file_416(tmp_path):
    dest = tmp_path / "d.bin"
    dest.with_name("d.bin.part").write_bytes(PAYLOAD)
    with _Server(honour_range=True) as server:
        download(server.url, dest, sha256=sha256(PAYLOAD), size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and server.bytes_sent == 0


def test_bad_partial_file_is_fetched_again_whole(tmp_path):
    dest = tmp_path / "d.bin"
    dest.with_name("d.bin.part").write_bytes(b"\xff" * 5000)  # wrong prefix
    with _Server(honour_range=True) as server:
        download(server.url, dest, sha256=sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=5000-", None]
    assert (tmp_path / "d.bin.corrupt").exists()  # the spoiled attempt is kept


def test_http_404_falls_back(source, tmp_path):
    with _Server(honour_range=True) as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            download(server.url + "x", tmp_path / "d.bin", progress=False)
        dest = download([server.url + "x", source.as_uri()], tmp_path / "d.bin", progress=False)
    assert dest.read_bytes() == PAYLOAD


def _make_tar(path, names, mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        for name in names:
            data = name.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


LRA_NAMES = [
    "lra_release/listops-1000/basic_val.tsv",
    "lra_release/lra_release/listops-1000/basic_train.tsv",
    "lra_release/lra_release/listops-1000/basic_val.tsv",
    "lra_release/lra_release/tsv_data/new_aan_pairs.eval.tsv",
    "lra_release/lra_release/pathfinder32/curv_contour_length_14/imgs/0/sample_0.png",
    "lra_release/lra_release/pathfinder32/curv_contour_length_14/metadata/0.npy",
    "lra_release/lra_release/pathfinder32/curv_baseline/metadata/0.npy",
    "lra_release/lra_release/pathfinder128/curv_contour_length_14/metadata/0.npy",
]


@pytest.mark.parametrize("mode", ["w:gz", "w"])
def test_extract_members_by_fragment(tmp_path, mode):
    archive = tmp_path / "lra_release.gz"
    _make_tar(archive, LRA_NAMES, mode)
    out = extract_members(archive, "lra_release/lra_release/listops-1000", tmp_path / "x",
                          progress=False)  # fmt: skip
    names = [p.relative_to(tmp_path / "x").as_posix() for p in out]
    assert names == LRA_NAMES[1:3]
    assert (tmp_path / "x" / LRA_NAMES[1]).read_text() == LRA_NAMES[1]
    assert not (tmp_path / "x" / "lra_release" / "listops-1000").exists()


def test_extract_members_one_pathfinder_folder_and_callable(tmp_path):
    archive = tmp_path / "a.tar.gz"
    _make_tar(archive, LRA_NAMES)
    out = extract_members(archive, ["pathfinder32/curv_contour_length_14"], tmp_path / "x",
                          progress=False)  # fmt: skip
    assert [p.name for p in out] == ["sample_0.png", "0.npy"]
    out = extract_members(archive, lambda n: n.endswith("aan_pairs.eval.tsv"), tmp_path / "y",
                          progress=False)  # fmt: skip
    assert [p.name for p in out] == ["new_aan_pairs.eval.tsv"]
    # a fragment matches whole path components only
    assert extract_members(archive, "listops-10", tmp_path / "z", progress=False) == []


def test_extract_members_refuses_path_traversal(tmp_path):
    archive = tmp_path / "evil.tar"
    _make_tar(archive, ["data/../../evil.txt"], "w")
    with pytest.raises(tarfile.FilterError):
        extract_members(archive, "data", tmp_path / "x", progress=False)
    assert not (tmp_path / "evil.txt").exists()
