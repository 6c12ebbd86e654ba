"""converters/download.py against a real HTTP server on 127.0.0.1 serving archives built here.

Never touches the internet: every URL points at the local server (``--base-url``).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from converters import download

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- server


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; honours ``Range: bytes=N-`` when the server says so; logs requests."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if self.server.support_range and rng and path.is_file():
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            data = path.read_bytes()
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])
            return
        super().do_GET()


@pytest.fixture()
def server(tmp_path):
    """``(base_url, served_dir, httpd)``; put files in served_dir to serve them."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    httpd.requests = []
    httpd.support_range = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served, httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------------------- archives


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None,
         compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # S_IFLNK: how Info-ZIP stores a symlink
            zf.writestr(info, target)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(*archives: Path, sha: dict[str, str] | None = None) -> dict:
    sha = sha or {}
    return {"files": {a.name: {"sha256": sha.get(a.name, _sha(a))} for a in archives},
            "file_url_pattern": "http://never-used.invalid/{name}"}


GOOD = {
    "Lung_Mask/coronacases_001.nii.gz": b"\x1f\x8b fake nifti 1" * 100,
    "Lung_Mask/radiopaedia_4_85506_1.nii.gz": os.urandom(3000),
}


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name or p.suffix == ".part")


# ---------------------------------------------------------------------------- tests


def test_good_archive_is_verified_and_extracted(server, tmp_path):
    url, served, httpd = server
    a = _zip(served / "Lung_Mask.zip", GOOD)
    flat = _zip(served / "Infection_Mask.zip", {"coronacases_001.nii.gz": b"inf" * 50})
    dest = tmp_path / "raw"
    out = download.download_all(dest, base_url=url, record=_record(a, flat), progressbar=False, log=lambda *_: None)
    assert out == [dest / "Lung_Mask", dest / "Infection_Mask"]
    # the archive's own top folder is not doubled; a flat archive gets its folder
    for name, data in GOOD.items():
        assert (dest / name).read_bytes() == data
    assert (dest / "Infection_Mask" / "coronacases_001.nii.gz").read_bytes() == b"inf" * 50
    assert _sha(dest / ".archives" / "Lung_Mask.zip") == _sha(a)
    assert _leftovers(tmp_path / "raw") == []
    # second run: nothing downloaded (verified copy on disk), nothing re-extracted
    n = len(httpd.requests)
    download.download_all(dest, base_url=url, record=_record(a, flat), progressbar=False, log=lambda *_: None)
    assert len(httpd.requests) == n


def test_checksum_mismatch_deletes_the_file_and_says_so(server, tmp_path):
    url, served, _ = server
    a = _zip(served / "Lung_Mask.zip", GOOD)
    wrong = "0" * 64
    dest = tmp_path / "raw"
    with pytest.raises(download.ChecksumError) as e:
        download.download_all(dest, base_url=url, record=_record(a, sha={a.name: wrong}), progressbar=False)
    msg = str(e.value)
    assert "Lung_Mask.zip" in msg and "checksum mismatch" in msg
    assert wrong in msg and _sha(a) in msg and "deleted" in msg
    assert list((dest / ".archives").iterdir()) == []  # no archive, no .part, no pooch temp
    assert not (dest / "Lung_Mask").exists()


@pytest.mark.parametrize("evil", ["../evil.txt", "Lung_Mask/../../evil.txt", "/tmp/lungbench-evil.txt",
                                  "C:/evil.txt"])
def test_zip_escaping_the_target_is_rejected(server, tmp_path, evil):
    url, served, _ = server
    a = _zip(served / "Lung_Mask.zip", {"Lung_Mask/ok.nii.gz": b"ok", evil: b"pwned"})
    dest = tmp_path / "sub" / "raw"
    with pytest.raises(download.UnsafeArchiveError, match=re.escape(repr(evil))):
        download.download_all(dest, base_url=url, record=_record(a), progressbar=False)
    assert not (dest / "Lung_Mask").exists()  # nothing extracted, not even the good member
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert not Path("/tmp/lungbench-evil.txt").exists()
    assert _leftovers(dest) == []
    # refused by the up-front check, before any extraction starts
    with pytest.raises(download.UnsafeArchiveError, match="escapes the target|absolute path"):
        download.check_archive(a)


def test_zip_with_symlink_member_is_rejected(server, tmp_path):
    url, served, _ = server
    a = _zip(served / "Lung_Mask.zip", GOOD, symlinks={"Lung_Mask/link.nii.gz": "/etc/passwd"})
    dest = tmp_path / "raw"
    with pytest.raises(download.UnsafeArchiveError, match="symbolic link"):
        download.download_all(dest, base_url=url, record=_record(a), progressbar=False)
    assert not (dest / "Lung_Mask").exists()
    assert _leftovers(dest) == []


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_tar_with_link_member_is_rejected(tmp_path, kind):
    path = tmp_path / "x.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        data = b"hello"
        info = tarfile.TarInfo("x/a.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("x/b.txt")
        link.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(download.UnsafeArchiveError, match="symbolic link" if kind == "symlink" else "hard link"):
        download.safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_is_extracted(tmp_path):
    path = tmp_path / "x.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("x/sub/a.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    download.safe_extract(path, tmp_path / "x", strip="x")
    assert (tmp_path / "x" / "sub" / "a.txt").read_bytes() == b"hello"


def test_absurd_sizes_are_rejected(tmp_path):
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(8 * 1024**2)})  # ~8 MB -> ~8 KB
    with pytest.raises(download.UnsafeArchiveError, match="zip bomb"):
        download.safe_extract(bomb, tmp_path / "out")
    big = _zip(tmp_path / "big.zip", {"rand.bin": os.urandom(200_000)})
    with pytest.raises(download.UnsafeArchiveError, match="exceeds the limit"):
        download.safe_extract(big, tmp_path / "out", max_bytes=100_000)
    # the limits are configurable: the same archives pass with generous ones
    download.safe_extract(bomb, tmp_path / "ok", max_ratio=10_000)
    assert (tmp_path / "ok" / "zeros.bin").stat().st_size == 8 * 1024**2
    assert not (tmp_path / "out").exists()


def test_not_an_archive_is_a_clear_error(tmp_path):
    p = tmp_path / "Lung_Mask.zip"
    p.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(download.DownloadError, match="not a zip or tar archive"):
        download.safe_extract(p, tmp_path / "out")


@pytest.mark.parametrize("support_range", [True, False])
def test_interrupted_download_resumes(server, tmp_path, support_range):
    url, served, httpd = server
    httpd.support_range = support_range
    a = _zip(served / "Lung_Mask.zip", GOOD, compression=zipfile.ZIP_STORED)
    data = a.read_bytes()
    dest = tmp_path / "raw"
    part = dest / ".archives" / "Lung_Mask.zip.part"
    part.parent.mkdir(parents=True)
    # what a broken transfer leaves: the first part of the file (garbage when the server
    # ignores ranges, to show the part is then discarded, not blindly appended to)
    part.write_bytes(data[: len(data) // 2] if support_range else b"garbage" * 100)
    download.download_all(dest, base_url=url, record=_record(a), progressbar=False, log=lambda *_: None)
    # the downloader asked for the rest of the .part; a server ignoring ranges sent it all
    assert httpd.requests[-1] == ("/Lung_Mask.zip", f"bytes={len(data) // 2 if support_range else 700}-")
    assert (dest / ".archives" / "Lung_Mask.zip").read_bytes() == data
    assert not part.exists()
    for name, content in GOOD.items():
        assert (dest / name).read_bytes() == content


def test_http_error_names_the_url(server, tmp_path):
    url, _, _ = server
    rec = {"files": {"Lung_Mask.zip": {"sha256": "a" * 64}}, "file_url_pattern": "x/{name}"}
    with pytest.raises(download.DownloadError, match=re.escape(f"{url}/Lung_Mask.zip")):
        download.download_all(tmp_path / "raw", base_url=url, record=rec, retries=0, progressbar=False)


def test_existing_foreign_folder_is_not_overwritten(server, tmp_path):
    url, served, _ = server
    a = _zip(served / "Lung_Mask.zip", GOOD)
    (tmp_path / "raw" / "Lung_Mask").mkdir(parents=True)
    (tmp_path / "raw" / "Lung_Mask" / "mine.txt").write_text("keep")
    with pytest.raises(download.DownloadError, match="move it away"):
        download.download_all(tmp_path / "raw", base_url=url, record=_record(a), progressbar=False)
    assert (tmp_path / "raw" / "Lung_Mask" / "mine.txt").read_text() == "keep"


def test_packaged_record_lists_the_four_zenodo_archives():
    rec = download.load_record()
    assert set(rec["files"]) == {"COVID-19-CT-Seg_20cases.zip", "Lung_and_Infection_Mask.zip",
                                 "Lung_Mask.zip", "Infection_Mask.zip"}
    urls = [a.url for a in download.archives(rec)]
    assert all(u.startswith("https://zenodo.org/records/3757476/files/") for u in urls)
    assert [a.name for a in download.archives(rec, only=["Lung_Mask"])] == ["Lung_Mask.zip"]
    with pytest.raises(download.DownloadError, match="unknown archive"):
        download.archives(rec, only=["nope"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converters.download", "--no-progress", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_with_the_packaged_record_rejects_a_wrong_file(server, tmp_path):
    # The server's Lung_Mask.zip is not Zenodo's: the published sha256 must catch it.
    url, served, _ = server
    _zip(served / "Lung_Mask.zip", GOOD)
    r = _cli("--dest", str(tmp_path / "raw"), "--base-url", url, "--only", "Lung_Mask")
    assert r.returncode == 1
    assert "checksum mismatch" in r.stderr and "Lung_Mask.zip" in r.stderr
    assert list((tmp_path / "raw" / ".archives").iterdir()) == []


def test_cli_downloads_and_extracts(server, tmp_path):
    url, served, _ = server
    a = _zip(served / "Lung_Mask.zip", GOOD)
    rec = tmp_path / "record.json"
    rec.write_text(json.dumps(_record(a)))
    r = _cli("--dest", str(tmp_path / "raw"), "--base-url", url, "--record", str(rec))
    assert r.returncode == 0, r.stderr
    assert "extracted" in r.stdout
    assert (tmp_path / "raw" / "Lung_Mask" / "coronacases_001.nii.gz").exists()


def test_corrupt_copy_on_disk_is_downloaded_again(server, tmp_path):
    url, served, httpd = server
    a = _zip(served / "Lung_Mask.zip", GOOD)
    stale = tmp_path / "raw" / ".archives" / "Lung_Mask.zip"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"truncated")
    download.download_all(tmp_path / "raw", base_url=url, record=_record(a), progressbar=False, log=lambda *_: None)
    assert _sha(stale) == _sha(a) and len(httpd.requests) == 1
