"""Running the sweep's train.py commands: some at once, each with its output in its train.log, and
stopping them all cleanly on Ctrl-C or SIGTERM. What to run is study/sweep.py's job.

  jobs = Jobs(quiet=False)
  codes = jobs.run_all(items, n, finished, threads, skip)  # items: (label, run_dir, cmd, message printed at
  # its start[, the command as train.log shows it]), n at a time, each with OMP_NUM_THREADS=threads;
  # finished(label, exit code, seconds) after each; skip(label): a reason not to start it after all, or None

Stopping. While run_all waits, SIGINT, SIGTERM and SIGHUP only set a flag: an exception raised by a
signal handler lands wherever the main thread is, inside a lock or a thread start as well, and a
second signal close behind the first could then leave a train.py unstopped. The main thread sees the
flag within a fraction of a second, sends every running train.py SIGTERM (train.py saves results.json
as "interrupted" and exits), starts no new run, waits for all of them, then raises KeyboardInterrupt.
An error in a worker (a full disk, a failed start) stops the others the same way, then is raised.
SIGTERM to the children, not SIGINT: a sweep started in the background (`&`, nohup) passes on an
ignored SIGINT to them.
"""
import concurrent.futures
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

KILL_AFTER_SECONDS = 60  # a train.py that has not written results.json by then is killed
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ROOT = Path(__file__).resolve().parents[1]  # the repository: train.log shows commands as typed from here
PATH_FLAGS = ("--out", "--data-dir", "--model")  # train.py flags whose value can be a path of this machine


def shown(cmd: list) -> str:
    """A train.py command as a user would type it from the repository root, for train.log: `python
    train.py ...`, each path flag's value relative to the repository (a --model that is not a local path,
    "minilm" or a hub id, as given). The machine's interpreter and absolute paths mean nothing to a reader."""
    args = [str(a) for a in cmd[2:]]
    for i in range(len(args) - 1):
        value = args[i + 1]
        if args[i] in PATH_FLAGS and (args[i] != "--model" or os.path.isabs(value) or Path(value).exists()):
            args[i + 1] = Path(os.path.relpath(Path(value).resolve(), ROOT)).as_posix()
    return shlex.join(["python", "train.py", *args])


def near(path: Path) -> str:
    """A path relative to the working directory when it lies below it (train.py, for a sweep started in
    the repository), else absolute."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def threads_per_job(n: int):
    """OMP_NUM_THREADS for each of n runs at once: an equal share of the cores this process may use
    (its affinity mask, which a container's CPU limit sets, not the host's count); None, torch's
    default of every core, for one run or when OMP_NUM_THREADS is already set."""
    if n == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // n)


class Jobs:
    def __init__(self, quiet: bool):
        self.quiet = quiet  # True: output to train.log only, not to the terminal
        self.lock = threading.Lock()  # guards `running` and `stopping` against the worker threads
        self.running = set()  # the train.py processes alive now
        self.stopping = False  # set once stopping has begun: no new run starts
        self.signalled = threading.Event()  # set by a stop signal while run_all waits

    def run_all(self, items: list, n: int, finished, threads: int = None, skip=None) -> dict:
        """Run every (label, run_dir, cmd, message[, shown]), n at a time, calling finished(label, exit
        code, seconds) as each ends; -> {label: exit code} of those that ran. threads: each train.py's
        OMP_NUM_THREADS (None: the environment's; torch's default is every core). skip(label), asked as a
        run's turn comes: a reason to leave it (printed), or None. With n > 1 the output goes to
        train.log only: two runs' output would interleave on the terminal."""
        quiet = self.quiet or n > 1
        codes = {}

        def work(label, run_dir, cmd, message, shown=None):
            try:
                reason = skip(label) if skip is not None else None
                if reason:
                    print(f"{label}: {reason}", flush=True)
                    return None
                t0 = time.perf_counter()
                code = self.run_one(run_dir, cmd, quiet, message, threads, shown)
                if code is not None:
                    finished(label, code, time.perf_counter() - t0)
                return code
            except BaseException:
                with self.lock:  # before this worker takes the next run
                    self.stopping = True
                raise

        # an ignored signal stays ignored: nohup ignores SIGHUP, a shell's `&` SIGINT
        previous = {s: signal.signal(s, lambda *_: self.signalled.set()) for s in STOP_SIGNALS
                    if signal.getsignal(s) is not signal.SIG_IGN}
        pool, error = concurrent.futures.ThreadPoolExecutor(max_workers=n), None
        try:
            futures = {pool.submit(work, *item): item[0] for item in items}
            pending = set(futures)
            while pending and not self.signalled.is_set():
                done, pending = concurrent.futures.wait(pending, timeout=0.2,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
                codes.update({futures[f]: f.result() for f in done if f.result() is not None})
        except Exception as e:  # a worker's error, raised by f.result()
            error = e
        if error is not None or self.signalled.is_set():
            self.stop_all(pool)  # with the handlers still ours: a second signal cannot interrupt it
        pool.shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if error is not None:
            raise error
        if self.signalled.is_set():
            raise KeyboardInterrupt
        return codes

    def run_one(self, run_dir, cmd: list, quiet: bool, message: str = "", threads: int = None, shown: str = None):
        """Print `message`, start train.py, copy its output to train.log (and the terminal), return its
        exit code; None when the sweep is stopping and it did not start. train.log begins with `shown`,
        the command as a user would type it (default: cmd itself)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        with self.lock:  # stop() sees either no process or this one
            if self.stopping:
                return None
            if message:
                print(message, flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "train.log", "ab")
            log.write(f"\n$ {shown or shlex.join(map(str, cmd))}\n".encode())
            log.flush()
            # A session of its own: a terminal's Ctrl-C reaches the sweep only, which passes it on once.
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=env)
            self.running.add(proc)
        try:
            with log:
                chunk = b"?"
                while chunk:  # until end of file: train.py has exited
                    chunk = proc.stdout.read1(65536)
                    log.write(chunk)
                    log.flush()
                    if not quiet:
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.flush()
            return proc.wait()
        finally:  # on an error too (a full disk): nobody would read its output, so it is stopped
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                kill_after(proc)
            with self.lock:
                self.running.discard(proc)

    def stop_all(self, pool):
        """SIGTERM to every running train.py (a kill if it hangs), no new run, and wait for them all."""
        with self.lock:
            self.stopping = True
            for proc in self.running:
                proc.send_signal(signal.SIGTERM)
                threading.Thread(target=kill_after, args=(proc,), daemon=True).start()
        pool.shutdown(wait=True, cancel_futures=True)


def kill_after(proc, grace_seconds=KILL_AFTER_SECONDS):
    """SIGKILL if train.py has not finished writing results.json within the grace period."""
    try:
        proc.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
