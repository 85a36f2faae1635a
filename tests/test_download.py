"""glue/download.py against a local HTTP server (127.0.0.1 only) that serves the five source files
built from the authentic GLUE copies: the result must be byte-identical to them, and every failure
(corrupt bytes, short body, dropped connection, missing file) must leave nothing behind."""
import http.server
import io
import threading
import zipfile

import pytest

from glue import TASKS, get_task
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
    response), "drop" (Content-Length of the whole file, then the connection closes half-way)."""
    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.faults, self.requests = dict(files), {}, []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/mirror"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = self.path.removeprefix("/mirror/")
        self.server.requests.append(name)
        if name not in self.server.files:
            self.send_error(404)
            return
        body, fault = self.server.files[name], self.server.faults.get(name)
        half = body[:len(body) // 2]
        self.send_response(200)
        self.send_header("Content-Length", str(len(half) if fault == "short" else len(body)))
        self.end_headers()
        self.wfile.write(half if fault in ("short", "drop") else body)
        self.close_connection = True  # for "drop": the socket closes with half of the bytes sent

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


@pytest.fixture
def mirror(server, originals, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # loopback only, even where a proxy is configured
    monkeypatch.delenv("GLUE_BASE_URL", raising=False)
    server.files, server.faults, server.requests = dict(originals), {}, []
    return server


def expected_files(glue_dir, task):
    """Every file the download must produce for the task, as a path relative to the data directory."""
    if task.name == "mrpc":
        names = [spec.name for spec in task.files.values()] + [pin.name for pin in MRPC_INPUTS.values()]
        return {f"MRPC/{n}": glue_dir / "MRPC" / n for n in names}
    directory, names = ARCHIVE_LAYOUT[task.archive]
    files = {f"{directory}/{n}": glue_dir / directory / n for n in names}
    if directory == "CoLA":
        files["CoLA/original/raw/in_domain_train.tsv"] = glue_dir / "CoLA" / "train.tsv"
    return files


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


def test_corrupted_archive_member_is_refused(mirror, glue_dir, tmp_path):
    members = archive_members(glue_dir, "CoLA.zip")
    members["CoLA/train.tsv"] = members["CoLA/train.tsv"].replace(b"\t1\t", b"\t0\t", 1)  # one label flipped
    mirror.files["CoLA.zip"] = make_zip(members)
    with pytest.raises(DownloadError, match=f"CoLA/train.tsv: expected 428590 bytes with sha256 "
                                            f"{get_task('cola').files['train'].sha256}, got 428590"):
        ensure_task("cola", tmp_path, mirror.url)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("name,task,message", [
    ("msr_paraphrase_test.txt", "mrpc", "expected 441275 bytes with sha256 a04e2710"),
    ("CoLA.zip", "cola", "not a valid zip archive"),
    ("STS-B.zip", "stsb", "not a valid zip archive"),
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
