"""glue/download.py against a local HTTP server (127.0.0.1 only) that serves the five source files
built from the authentic GLUE copies: the result must be byte-identical to them, and every failure
(corrupt bytes, short body, dropped connection, missing file) must leave nothing behind. The zips served
are built here, not GLUE's own: the `mirror` fixture pins their size and sha256 in place of GLUE's."""
import dataclasses
import hashlib
import http.server
import io
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from glue import TASKS, download, get_task
from glue.download import MRPC_INPUTS, OFFICIAL_URLS, DownloadError, ensure_task, main, sha256_of, url_for

ARCHIVE_LAYOUT = {  # GLUE's zips hold <Task dir>/ with the three splits and, for STS-B, its licence notes
    "CoLA.zip": ("CoLA", ["train.tsv", "dev.tsv", "test.tsv"]),
    "STS-B.zip": ("STS-B", ["train.tsv", "dev.tsv", "test.tsv", "LICENSE.txt", "readme.txt"]),
}


def make_zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def archive_members(glue_dir, archive: str) -> dict:
    directory, names = ARCHIVE_LAYOUT[archive]
    members = {f"{directory}/": b""}  # a directory entry, as zip tools write them
    members.update({f"{directory}/{n}": (glue_dir / directory / n).read_bytes() for n in names})
    if directory == "CoLA":  # GLUE's CoLA.zip also ships the raw files under original/
        members["CoLA/original/raw/in_domain_train.tsv"] = members["CoLA/train.tsv"]
    return members


class Mirror(http.server.ThreadingHTTPServer):
    """Serves `files` by name; `faults[name]` makes one misbehave: "short" (a consistent but truncated
    response), "drop" (Content-Length of the whole file, then the connection closes half-way), "huge"
    (announces 200 MB), "endless" (no Content-Length, then 200 MB: `sent` counts what got out)."""
    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.faults, self.requests, self.sent = dict(files), {}, [], 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}/mirror"


HUGE = 200 * 2 ** 20


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = self.path.removeprefix("/mirror/")
        self.server.requests.append(name)
        if name not in self.server.files:
            self.send_error(404)
            return
        body, fault = self.server.files[name], self.server.faults.get(name)
        if fault in ("huge", "endless"):
            self.oversized(body, fault)
            return
        half = body[:len(body) // 2]
        self.send_response(200)
        self.send_header("Content-Length", str(len(half) if fault == "short" else len(body)))
        self.end_headers()
        self.wfile.write(half if fault in ("short", "drop") else body)
        self.close_connection = True  # for "drop": the socket closes with half of the bytes sent

    def oversized(self, body, fault):
        self.send_response(200)
        if fault == "huge":
            self.send_header("Content-Length", str(HUGE))
        self.end_headers()
        block = (body * (2 ** 16 // len(body) + 1))[:2 ** 16] if body else b"x" * 2 ** 16
        try:
            while self.server.sent < HUGE:
                self.wfile.write(block)
                self.server.sent += len(block)
        except OSError:  # the client hung up: what we wanted
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def originals(glue_dir):
    files = {pin.remote: (glue_dir / "MRPC" / pin.name).read_bytes() for pin in MRPC_INPUTS.values()}
    files.update({archive: make_zip(archive_members(glue_dir, archive)) for archive in ARCHIVE_LAYOUT})
    return files


@pytest.fixture(scope="module")
def server(originals):
    mirror = Mirror(originals)
    thread = threading.Thread(target=mirror.serve_forever, daemon=True)
    thread.start()
    yield mirror
    mirror.shutdown()
    mirror.server_close()


def pin(monkeypatch, name: str, body: bytes):
    """Pin an archive to these bytes, in place of GLUE's zip (the tests serve zips of their own)."""
    pinned = dataclasses.replace(download.ARCHIVES[name], size=len(body), sha256=hashlib.sha256(body).hexdigest())
    monkeypatch.setitem(download.ARCHIVES, name, pinned)


@pytest.fixture
def mirror(server, originals, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # loopback only, even where a proxy is configured
    monkeypatch.delenv("GLUE_BASE_URL", raising=False)
    server.files, server.faults, server.requests, server.sent = dict(originals), {}, [], 0
    for name in ARCHIVE_LAYOUT:
        pin(monkeypatch, name, originals[name])
    return server


def expected_files(glue_dir, task):
    """Every file the download must produce for the task, as a path relative to the data directory."""
    if task.name == "mrpc":
        names = [spec.name for spec in task.files.values()] + [pin.name for pin in MRPC_INPUTS.values()]
        return {f"MRPC/{n}": glue_dir / "MRPC" / n for n in names}
    directory, names = ARCHIVE_LAYOUT[task.archive]
    return {f"{directory}/{n}": glue_dir / directory / n for n in names}  # not CoLA's original/: unpinned


def test_full_download_is_byte_identical_and_not_repeated(mirror, glue_dir, tmp_path):
    main(["--tasks", "mrpc", "cola", "stsb", "--dir", str(tmp_path), "--base-url", mirror.url])
    expected = {rel: src for task in TASKS.values() for rel, src in expected_files(glue_dir, task).items()}
    produced = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert produced == set(expected)  # no temporary files left either
    for rel, src in expected.items():
        assert (tmp_path / rel).read_bytes() == src.read_bytes(), rel
    assert sorted(mirror.requests) == sorted(mirror.files)
    mirror.requests.clear()
    for name in TASKS:
        ensure_task(name, tmp_path, mirror.url)
    assert mirror.requests == []  # files present and verified: nothing fetched


def test_only_a_missing_file_is_restored(mirror, glue_dir, tmp_path):
    ensure_task("cola", tmp_path, mirror.url)
    (tmp_path / "CoLA" / "test.tsv").unlink()
    train_inode = (tmp_path / "CoLA" / "train.tsv").stat().st_ino
    ensure_task("cola", tmp_path, mirror.url)
    assert (tmp_path / "CoLA" / "test.tsv").read_bytes() == (glue_dir / "CoLA" / "test.tsv").read_bytes()
    assert (tmp_path / "CoLA" / "train.tsv").stat().st_ino == train_inode  # not replaced


def assert_nothing_left(data_dir):
    assert [str(p) for p in data_dir.rglob("*")] == []


def test_corrupted_input_is_refused(mirror, tmp_path):
    body = bytearray(mirror.files["msr_paraphrase_train.txt"])
    body[5000] ^= 1  # same size, one bit off
    mirror.files["msr_paraphrase_train.txt"] = bytes(body)
    with pytest.raises(DownloadError) as error:
        ensure_task("mrpc", tmp_path, mirror.url)
    pin = MRPC_INPUTS["train"]
    message = str(error.value)
    assert f"{mirror.url}/msr_paraphrase_train.txt" in message and f"sha256 {pin.sha256}" in message
    assert f"expected {pin.size} bytes" in message and f"got {pin.size} bytes with sha256" in message
    assert_nothing_left(tmp_path)


def test_corrupted_archive_member_is_refused(mirror, glue_dir, tmp_path, monkeypatch):
    members = archive_members(glue_dir, "CoLA.zip")
    members["CoLA/train.tsv"] = members["CoLA/train.tsv"].replace(b"\t1\t", b"\t0\t", 1)  # one label flipped
    mirror.files["CoLA.zip"] = make_zip(members)
    pin(monkeypatch, "CoLA.zip", mirror.files["CoLA.zip"])  # a pinned archive, yet a wrong member: still refused
    with pytest.raises(DownloadError, match=f"CoLA/train.tsv: expected 428590 bytes with sha256 "
                                            f"{get_task('cola').files['train'].sha256}, got 428590"):
        ensure_task("cola", tmp_path, mirror.url)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("name,task,message", [
    ("msr_paraphrase_test.txt", "mrpc", "expected 441275 bytes with sha256 a04e2710"),
    ("CoLA.zip", "cola", "CoLA.zip: expected .* bytes with sha256"),  # refused before it is opened
    ("STS-B.zip", "stsb", "STS-B.zip: expected .* bytes with sha256"),
])
def test_truncated_body_is_refused(mirror, tmp_path, name, task, message):
    mirror.faults[name] = "short"  # Content-Length agrees with the short body: only the checks can tell
    with pytest.raises(DownloadError, match=message) as error:
        ensure_task(task, tmp_path, mirror.url)
    assert f"{mirror.url}/{name}" in str(error.value)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("name,task", [("mrpc_dev_ids.tsv", "mrpc"), ("STS-B.zip", "stsb")])
def test_dropped_connection_is_refused(mirror, tmp_path, name, task):
    mirror.faults[name] = "drop"
    size = len(mirror.files[name])
    with pytest.raises(DownloadError, match=f"{name}: connection ended after {size // 2} of {size} bytes"):
        ensure_task(task, tmp_path, mirror.url)
    assert_nothing_left(tmp_path)


def test_missing_source_names_the_url(mirror, tmp_path):
    del mirror.files["mrpc_dev_ids.tsv"]
    with pytest.raises(DownloadError, match=f"{mirror.url}/mrpc_dev_ids.tsv: download failed .*404"):
        ensure_task("mrpc", tmp_path, mirror.url)
    assert_nothing_left(tmp_path)


def test_existing_file_that_differs_is_reported_not_replaced(mirror, glue_dir, tmp_path):
    (tmp_path / "CoLA").mkdir()
    for name in ("train.tsv", "test.tsv"):
        (tmp_path / "CoLA" / name).write_bytes((glue_dir / "CoLA" / name).read_bytes())
    (tmp_path / "CoLA" / "dev.tsv").write_text("gj04\t1\t\tA hand-made dev file.\n")
    with pytest.warns(UserWarning, match=r"CoLA/dev.tsv: sha256 \w+ differs from GLUE's cola dev file"):
        ensure_task("cola", tmp_path, mirror.url)
    assert mirror.requests == [] and (tmp_path / "CoLA" / "dev.tsv").read_text().startswith("gj04")


def test_pins_match_the_authentic_copies(glue_dir):
    for pin in MRPC_INPUTS.values():
        path = glue_dir / "MRPC" / pin.name
        lines = path.read_bytes().count(b"\n")
        assert (path.stat().st_size, sha256_of(path), lines - (pin.name != "dev_ids.tsv")) == \
            (pin.size, pin.sha256, pin.rows)
    for task in TASKS.values():
        for spec in task.files.values():
            path = glue_dir / task.dir_name / spec.name
            assert (path.stat().st_size, sha256_of(path)) == (spec.size, spec.sha256)


def test_official_urls_and_mirror_override(monkeypatch):
    monkeypatch.delenv("GLUE_BASE_URL", raising=False)
    assert url_for("CoLA.zip") == "https://dl.fbaipublicfiles.com/glue/data/CoLA.zip"
    assert url_for("STS-B.zip") == "https://dl.fbaipublicfiles.com/glue/data/STS-B.zip"
    assert url_for("msr_paraphrase_test.txt") == \
        "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt"
    assert url_for("mrpc_dev_ids.tsv") == OFFICIAL_URLS["mrpc_dev_ids.tsv"]
    assert OFFICIAL_URLS["mrpc_dev_ids.tsv"].startswith("https://firebasestorage.googleapis.com/v0/b/"
                                                        "mtl-sentence-representations.appspot.com/o/")
    assert url_for("CoLA.zip", "http://m/x/") == "http://m/x/CoLA.zip"
    monkeypatch.setenv("GLUE_BASE_URL", "http://env-mirror")
    assert url_for("CoLA.zip") == "http://env-mirror/CoLA.zip"


# --------------------------------------------------------------- a mirror that misbehaves (issue 27)
def test_an_archive_that_is_not_the_pinned_one_is_never_opened(mirror, glue_dir, tmp_path, monkeypatch):
    """A zip with a member more (GLUE's files intact; original/ left out, so it is no larger) is another
    archive: refused by its sha256 before zipfile reads a byte of it."""
    members = {k: v for k, v in archive_members(glue_dir, "CoLA.zip").items() if "original" not in k}
    members["CoLA/run_me.sh"] = b"rm -rf ~\n"
    mirror.files["CoLA.zip"] = make_zip(members)
    opened = []
    monkeypatch.setattr(download.zipfile, "ZipFile", lambda *a, **k: opened.append(a))
    with pytest.raises(DownloadError, match=f"{mirror.url}/CoLA.zip: expected \\d+ bytes with sha256"):
        ensure_task("cola", tmp_path, mirror.url)
    assert opened == []
    assert_nothing_left(tmp_path)


def test_only_the_pinned_members_are_extracted(mirror, glue_dir, tmp_path, monkeypatch):
    """A pinned archive holding extra members (a script, another task's file, ../ and absolute paths): only
    GLUE's files and the pinned extras come out, nothing lands outside the data directory."""
    members = {**archive_members(glue_dir, "STS-B.zip"), "STS-B/run_me.sh": b"#!/bin/sh\n",
               "STS-B/original/sts-train.tsv": b"x\n", "../escaped.txt": b"x\n", "/tmp/absolute.txt": b"x\n",
               "STS-B/../../escaped2.txt": b"x\n"}
    mirror.files["STS-B.zip"] = make_zip(members)
    pin(monkeypatch, "STS-B.zip", mirror.files["STS-B.zip"])
    data_dir = tmp_path / "data"
    ensure_task("stsb", data_dir, mirror.url)
    produced = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert produced == {f"data/{rel}" for rel in expected_files(glue_dir, get_task("stsb"))}


def bomb(name: str, size: int, declared: int = None) -> bytes:
    """A zip whose member `name` inflates to `size` zero bytes from a few kB; `declared`: the size its
    headers claim instead (both the local header and the central directory are rewritten)."""
    raw = bytearray(make_zip({name: bytes(size)}))
    if declared is not None:
        for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
            at = raw.index(signature) + offset
            raw[at:at + 4] = declared.to_bytes(4, "little")
    return bytes(raw)


@pytest.mark.parametrize("declared, message", [
    (None, r"CoLA/train.tsv declares 104857600 bytes, GLUE's has 428590: not extracted"),
    (428590, r"not a valid zip archive \(BadZipFile: Bad CRC-32"),  # lies about its size: stopped at it
])
def test_a_zip_bomb_is_refused_before_it_is_written(mirror, tmp_path, monkeypatch, declared, message):
    mirror.files["CoLA.zip"] = bomb("CoLA/train.tsv", 100 * 2 ** 20, declared)
    assert len(mirror.files["CoLA.zip"]) < 200_000
    pin(monkeypatch, "CoLA.zip", mirror.files["CoLA.zip"])  # even a bomb the pin let through
    with pytest.raises(DownloadError, match=message):
        ensure_task("cola", tmp_path, mirror.url)
    assert_nothing_left(tmp_path)


def test_a_member_that_expands_past_its_size_is_stopped_there(tmp_path):
    """extract's own cap, whatever the zip library would hand out."""
    class Archive:
        def getinfo(self, name):
            info = zipfile.ZipInfo(name)
            info.file_size = 1000
            return info

        def open(self, info):
            return io.BytesIO(bytes(10 ** 6))

    with pytest.raises(DownloadError, match="X/train.tsv expands past its pinned 1000 bytes: stopped there"):
        download.extract(Archive(), "X/train.tsv", tmp_path / "train.tsv", 1000, "url")
    assert (tmp_path / "train.tsv").stat().st_size <= 1000 + 2 ** 16


@pytest.mark.parametrize("fault, message", [
    ("huge", f"the server announces {HUGE} bytes, the pinned file has 441275: refused without downloading it"),
    ("endless", "more than the pinned 441275 bytes: stopped there"),
])
def test_a_body_larger_than_pinned_is_not_read_to_its_end(mirror, tmp_path, fault, message):
    mirror.faults["msr_paraphrase_test.txt"] = fault
    with pytest.raises(DownloadError, match=f"msr_paraphrase_test.txt: {message}"):
        ensure_task("mrpc", tmp_path, mirror.url)
    assert_nothing_left(tmp_path)
    assert mirror.sent < HUGE // 4  # the client hung up long before the 200 MB


def test_command_line_failures_are_one_error_line(mirror, tmp_path, capsys):
    del mirror.files["mrpc_dev_ids.tsv"]
    with pytest.raises(SystemExit) as e:
        main(["--tasks", "mrpc", "--dir", str(tmp_path), "--base-url", mirror.url])
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 1 and [line for line in err if line.startswith("error:")] == err[-1:]
    assert err[-1].startswith(f"error: {mirror.url}/mrpc_dev_ids.tsv: download failed")
    done = subprocess.run([sys.executable, "-m", "glue.download", "--tasks", "cola", "--dir", str(tmp_path),
                           "--base-url", "http://127.0.0.1:9/none"], cwd=Path(download.__file__).parents[1],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "no_proxy": "127.0.0.1"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: http://127.0.0.1:9/none/CoLA.zip: download failed")
