"""Running the sweep's train.py commands: some at once, each with its output in its train.log, and
stopping them all cleanly on Ctrl-C or SIGTERM. What to run is study/sweep.py's job.

  jobs = Jobs(quiet=False)
  codes = jobs.run_all(items, n, finished, threads)  # items: (label, run_dir, cmd, message printed at its
  # start), n at a time, each with OMP_NUM_THREADS=threads; finished(label, exit code, seconds) after each

Signals reach the main thread only: it waits for the runs and, on the first Ctrl-C or SIGTERM, sends
each running train.py SIGTERM (train.py saves results.json as "interrupted" and exits), starts no
new run, waits for all of them, then raises KeyboardInterrupt. SIGTERM, not SIGINT: a sweep started
in the background (`&`, nohup) passes on an ignored SIGINT to its children.
"""
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time

KILL_AFTER_SECONDS = 60  # a train.py that has not written results.json by then is killed


class Jobs:
    def __init__(self, quiet: bool):
        self.quiet = quiet  # True: output to train.log only, not to the terminal
        self.lock = threading.Lock()  # guards `running` and `stopping` against the worker threads
        self.running = set()  # the train.py processes alive now
        self.stopping = False  # set on the first signal: no new run starts

    def run_all(self, items: list, n: int, finished, threads: int = None) -> dict:
        """Run every (label, run_dir, cmd, message), n at a time, calling finished(label, exit code,
        seconds) as each ends; -> {label: exit code} of those that ran. threads: each train.py's
        OMP_NUM_THREADS (None: the environment's; torch's default is every core). With n > 1 the output
        goes to train.log only: two runs' output would interleave on the terminal."""
        quiet = self.quiet or n > 1
        codes = {}

        def work(label, run_dir, cmd, message):
            t0 = time.perf_counter()
            code = self.run_one(run_dir, cmd, quiet, message, threads)
            if code is not None:
                finished(label, code, time.perf_counter() - t0)
            return code

        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            futures = {pool.submit(work, *item): item[0] for item in items}
            pending = set(futures)
            try:
                while pending:  # a wait with a timeout: the main thread stays responsive to signals
                    done, pending = concurrent.futures.wait(pending, timeout=1.0,
                                                            return_when=concurrent.futures.FIRST_COMPLETED)
                    codes.update({futures[f]: f.result() for f in done if f.result() is not None})
            except KeyboardInterrupt:
                self.stop()
                self.wait_for(pending)
                raise
        return codes

    def run_one(self, run_dir, cmd: list, quiet: bool, message: str = "", threads: int = None):
        """Print `message`, start train.py, copy its output to train.log (and the terminal), return its
        exit code; None when the sweep is stopping and it did not start."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        with self.lock:  # stop() sees either no process or this one
            if self.stopping:
                return None
            if message:
                print(message, flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "train.log", "ab")
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            # A session of its own: a terminal's Ctrl-C reaches the sweep only, which passes it on once.
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=env)
            self.running.add(proc)
        with log:
            chunk = b"?"
            while chunk:  # until end of file: train.py has exited
                chunk = proc.stdout.read1(65536)
                log.write(chunk)
                log.flush()
                if not quiet:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            code = proc.wait()
        with self.lock:
            self.running.discard(proc)
        return code

    def stop(self):
        """The first signal: SIGTERM to every running train.py (a kill if it hangs), no new run."""
        with self.lock:
            self.stopping = True
            for proc in self.running:
                proc.send_signal(signal.SIGTERM)
                threading.Thread(target=kill_after, args=(proc,), daemon=True).start()

    @staticmethod
    def wait_for(futures):
        """Until every run has exited; further signals are ignored (the first one is being handled)."""
        while futures:
            try:
                _, futures = concurrent.futures.wait(futures, timeout=1.0)
            except KeyboardInterrupt:
                continue


def kill_after(proc, grace_seconds=KILL_AFTER_SECONDS):
    """SIGKILL if train.py has not finished writing results.json within the grace period."""
    try:
        proc.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
