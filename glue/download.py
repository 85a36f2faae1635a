"""Fetch GLUE's MRPC, CoLA and STS-B from the sources GLUE's download_glue_data.py uses, and check
every byte against the copies pinned in glue/<task>.py.

    python -m glue.download --tasks mrpc cola stsb --dir DIR [--base-url URL]

CoLA and STS-B come as GLUE's zip archives; MRPC is built from SentEval's copy of the corpus
and GLUE's list of dev ids, exactly as GLUE's `format_mrpc` does (see `build_mrpc`). Every source
file is pinned (size and sha256, as huggingface/datasets' glue dataset_infos.json publishes them):
a download streams to a temporary file and stops at the pinned size, an archive's sha256 is checked
before it is opened, and only the members GLUE's files come from are extracted, each stopped at its
own pinned size (a zip bomb writes no more than that). Everything is written under a temporary
directory inside DIR and verified there; only verified files are renamed into DIR/<Task dir>/, so a
failed or corrupted download leaves nothing half-written. `python -m glue.download` ends a failure
with one line, `error: ...`, and exit status 1.
A mirror holding the five source files by name (CoLA.zip, STS-B.zip, msr_paraphrase_train.txt,
msr_paraphrase_test.txt, mrpc_dev_ids.tsv) can stand in for the official URLs: pass --base-url
or set GLUE_BASE_URL.
"""
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from flags import Parser
from glue import TASKS, Task, get_task

GLUE_DATA_URL = "https://dl.fbaipublicfiles.com/glue/data"  # CoLA.zip, STS-B.zip, ...
SENTEVAL_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data"
OFFICIAL_URLS = {
    "msr_paraphrase_train.txt": f"{SENTEVAL_URL}/msr_paraphrase_train.txt",
    "msr_paraphrase_test.txt": f"{SENTEVAL_URL}/msr_paraphrase_test.txt",
    "mrpc_dev_ids.tsv": "https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations.appspot.com"
                        "/o/data%2Fmrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-7480817f1adc",
}
BASE_URL_ENV = "GLUE_BASE_URL"
DEFAULT_DATA_DIR = "~/.cache/bertfit/glue_data"
TIMEOUT_S = 60  # per socket operation, so a stalled server ends in an error, not a hang
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Pinned:
    name: str  # file name under MRPC/
    remote: str  # file name at the source or mirror
    size: int  # bytes
    sha256: str
    rows: int  # lines after the header (id pairs for dev ids)


# Published with the same sizes and sha256 in huggingface/datasets' glue dataset_infos.json.
MRPC_INPUTS = {
    "train": Pinned("msr_paraphrase_train.txt", "msr_paraphrase_train.txt", 1047044,
                    "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89", 4076),
    "test": Pinned("msr_paraphrase_test.txt", "msr_paraphrase_test.txt", 441275,
                   "a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784", 1725),
    "dev_ids": Pinned("dev_ids.tsv", "mrpc_dev_ids.tsv", 6222,
                      "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7", 408),
}
MRPC_TEST_HEADER = "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


@dataclass(frozen=True)
class Archive:
    size: int  # bytes of GLUE's zip
    sha256: str  # of GLUE's zip
    extras: dict  # file name -> (size, sha256) of the files besides the task's splits that we keep from it


# GLUE's zips, with the sizes and sha256 of huggingface/datasets' glue dataset_infos.json. From each, only
# <Task dir>/{train,dev,test}.tsv (pinned in glue/<task>.py) and these extras are extracted.
ARCHIVES = {
    "CoLA.zip": Archive(376971, "f212fcd832b8f7b435fb991f101abf89f96b933ab400603bf198960dfc32cbff", {}),
    "STS-B.zip": Archive(802872, "e60a6393de5a8b5b9bac5020a1554b54e3691f9d600b775bd131e613ac179c85", {
        "LICENSE.txt": (6641, "3dfc3217395f8c5dd05c5f8995f25fe2f8fd258e6dd770b3de480749caee8c70"),
        "readme.txt": (5994, "e9488363d211c32ca5e912954f16eb9233cfed1b5b4b0475d0d812d35d7c8ef1")}),
}


def resolve_data_dir(arg=None) -> Path:
    """The GLUE data directory: `arg` (--data-dir) if given, else $GLUE_DIR, else ~/.cache/bertfit/glue_data."""
    return Path(os.path.expanduser(str(arg or os.environ.get("GLUE_DIR") or DEFAULT_DATA_DIR)))


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def url_for(remote: str, base_url: str | None = None) -> str:
    """The official URL of a source file, or its place on a mirror (argument, else $GLUE_BASE_URL)."""
    base_url = base_url or os.environ.get(BASE_URL_ENV)
    if base_url:
        return f"{base_url.rstrip('/')}/{remote}"
    return OFFICIAL_URLS.get(remote, f"{GLUE_DATA_URL}/{remote}")


def check(path: Path, size: int, sha256: str, what: str):
    """Raise DownloadError naming `what` unless the file has exactly this size and sha256."""
    got_size, got_sha = path.stat().st_size, sha256_of(path)
    if (got_size, got_sha) != (size, sha256):
        raise DownloadError(f"{what}: expected {size} bytes with sha256 {sha256}, "
                            f"got {got_size} bytes with sha256 {got_sha}")


def fetch(url: str, dest: Path, size: int):
    """Stream `url` to `dest`, stopping at the pinned `size`: a body announced or found to be larger is
    refused without reading it all; a short one (fewer bytes than Content-Length) is an error too."""
    print(f"downloading {url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
            expected = response.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and int(expected) > size:
                raise DownloadError(f"{url}: the server announces {expected} bytes, the pinned file has {size}: "
                                    "refused without downloading it")
            received = 0
            for block in iter(lambda: response.read(min(CHUNK, size + 1 - received)), b""):
                out.write(block)
                received += len(block)
                if received > size:
                    raise DownloadError(f"{url}: more than the pinned {size} bytes: stopped there")
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, resets, IncompleteRead
        raise DownloadError(f"{url}: download failed ({type(e).__name__}: {e})") from None
    if expected is not None and received != int(expected):
        raise DownloadError(f"{url}: connection ended after {received} of {expected} bytes")


def extract(archive: zipfile.ZipFile, member: str, dest: Path, size: int, url: str):
    """Write one member to `dest`, refusing a member whose declared size is not the pinned `size` and
    stopping at `size` bytes whatever the compressed stream would expand to (a zip bomb)."""
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise DownloadError(f"{url}: the archive has no {member}") from None
    if info.file_size != size:
        raise DownloadError(f"{url}: {member} declares {info.file_size} bytes, GLUE's has {size}: not extracted")
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with archive.open(info) as source, open(dest, "wb") as out:  # zipfile checks the CRC-32 at the end
        for block in iter(lambda: source.read(min(CHUNK, size + 1 - written)), b""):
            out.write(block)
            written += len(block)
            if written > size:
                raise DownloadError(f"{url}: {member} expands past its pinned {size} bytes: stopped there")


def fetch_archive(task: Task, tmp: Path, base_url: str | None) -> dict:
    """Download the task's GLUE zip (stopped at its pinned size), check its sha256 before opening it,
    and extract only the task's split files and the pinned extras, each checked against its size and
    sha256. Other members (CoLA's original/, anything a mirror added, paths with ..) stay in the zip.
    Returns {path relative to the task directory: extracted, verified file}."""
    url, pin = url_for(task.archive, base_url), ARCHIVES[task.archive]
    fetch(url, tmp / task.archive, pin.size)
    check(tmp / task.archive, pin.size, pin.sha256, url)
    wanted = {spec.name: (spec.size, spec.sha256) for spec in task.files.values()} | pin.extras
    out = {}
    try:
        with zipfile.ZipFile(tmp / task.archive) as archive:
            for name, (size, sha256) in wanted.items():
                dest = tmp / "extracted" / name
                extract(archive, f"{task.dir_name}/{name}", dest, size, url)
                check(dest, size, sha256, f"{task.dir_name}/{name}")
                out[name] = dest
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error) as e:
        raise DownloadError(f"{url}: not a valid zip archive ({type(e).__name__}: {e})") from None
    return out


def _text_lines(path: Path) -> list:
    """Lines as GLUE's script reads them: text mode, universal newlines, and utf-8 (not utf-8-sig),
    so the BOM of the MSR files stays in the header line it copies."""
    with open(path, encoding="utf-8", newline=None) as f:
        return f.readlines()


def build_mrpc(task: Task, tmp: Path, base_url: str | None) -> dict:
    """GLUE's `format_mrpc`, reimplemented: the header of msr_paraphrase_train.txt (BOM included) heads
    train.tsv and dev.tsv; each later line, stripped and split into label, id1, id2, s1, s2, goes to
    dev.tsv if (id1, id2) is in dev_ids.tsv, else to train.tsv. test.tsv gets a fixed header and a
    running index in place of the label. Returns {file name: built file}."""
    inputs = {}
    for key, pin in MRPC_INPUTS.items():
        url = url_for(pin.remote, base_url)
        fetch(url, tmp / pin.name, pin.size)
        check(tmp / pin.name, pin.size, pin.sha256, url)
        inputs[key] = tmp / pin.name
    dev_ids = {tuple(row.strip().split("\t")) for row in _text_lines(inputs["dev_ids"])}
    train_lines, test_lines = _text_lines(inputs["train"]), _text_lines(inputs["test"])
    train, dev = [train_lines[0]], [train_lines[0]]
    for row in train_lines[1:]:
        label, id1, id2, s1, s2 = row.strip().split("\t")
        (dev if (id1, id2) in dev_ids else train).append("\t".join([label, id1, id2, s1, s2]) + "\n")
    test = [MRPC_TEST_HEADER]
    for index, row in enumerate(test_lines[1:]):
        _, id1, id2, s1, s2 = row.strip().split("\t")
        test.append("\t".join([str(index), id1, id2, s1, s2]) + "\n")
    out = {pin.name: path for pin, path in zip(MRPC_INPUTS.values(), inputs.values())}
    for split, lines in (("train", train), ("dev", dev), ("test", test)):
        path = tmp / task.files[split].name
        path.write_text("".join(lines), encoding="utf-8", newline="\n")
        out[task.files[split].name] = path
    return out


def ensure_task(task, data_dir, base_url: str | None = None) -> Path:
    """Make sure DATA_DIR/<Task dir>/ holds the task's train, dev and test files; returns that directory.

    Files already there are not fetched again; each is checked against its pinned sha256 and a
    mismatch is reported with a warning that names the file (a hand-made copy still runs, but its
    results are not comparable). Missing files are downloaded, verified and renamed into place;
    an error names the URL or file and the expected against the received size and sha256. Where a
    file goes and something else is (a directory), that is an error naming it: nothing is fetched."""
    task = get_task(task) if isinstance(task, str) else task
    data_dir = Path(data_dir)
    task_dir = data_dir / task.dir_name
    missing = []
    for split, spec in task.files.items():
        path = task_dir / spec.name
        if path.exists() and not path.is_file():  # a directory (or a device...) where a file goes: never replaced
            raise DownloadError(f"{path}: exists and is not a regular file; move it away and run again")
        if not path.is_file():
            missing.append(spec.name)
        elif (got := sha256_of(path)) != spec.sha256:
            warnings.warn(f"{path}: sha256 {got} differs from GLUE's {task.name} {split} file "
                          f"(sha256 {spec.sha256}, {spec.size} bytes); results on it are not comparable")
    if not missing:
        return task_dir
    print(f"{task.name}: {', '.join(missing)} missing under {task_dir}; fetching", file=sys.stderr)
    data_dir.mkdir(parents=True, exist_ok=True)
    # The temporary directory sits in data_dir so the final renames stay on one filesystem (atomic).
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
        tmp = Path(tmp)
        if task.archive is not None:
            built = fetch_archive(task, tmp, base_url)
        elif task.name == "mrpc":
            built = build_mrpc(task, tmp, base_url)
        else:
            raise DownloadError(f"task {task.name}: no download source (set Task.archive)")
        for spec in task.files.values():
            if spec.name not in built:
                raise DownloadError(f"{task.name}: the download produced no {spec.name}")
            check(built[spec.name], spec.size, spec.sha256, f"{task.dir_name}/{spec.name}")
        for rel, path in built.items():
            dest = task_dir / rel
            if not dest.exists():  # never overwrite a file that was already there
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest)
    return task_dir


def main(argv=None):
    parser = Parser(prog="python -m glue.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--dir", default=None, help="data directory (default: $GLUE_DIR, else "
                        f"{DEFAULT_DATA_DIR})")
    parser.add_argument("--base-url", default=None, help=f"mirror of the source files (or ${BASE_URL_ENV})")
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.dir)
    try:
        for name in args.tasks:
            print(f"{name}: ready in {ensure_task(name, data_dir, args.base_url)}")
    except (DownloadError, OSError) as e:  # each names its URL, file or directory
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
