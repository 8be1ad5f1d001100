"""Locks that hold on NFS and Lustre: create-exclusive lock files with an owner and a heartbeat.

fcntl locks are not dependable on cluster file systems: Lustre mounted without flock support raises,
and with `localflock` two nodes both "hold" the same lock. Creating a file with O_CREAT | O_EXCL is
atomic on local disks, NFSv3+ and Lustre, so the lock is the file itself, holding JSON:

    {"owner": "HOST:PID", "host": ..., "pid": ..., "token": ..., "acquired": T, "heartbeat": T}

The holder rewrites its heartbeat every `heartbeat_s` from a thread. A lock is stale when its holder
is a process of this host that no longer exists, or when its heartbeat is older than `stale_after_s`
(times are the hosts' wall clocks: keep the timeout far above the cluster's clock skew). A stale lock
is taken over one taker at a time (a create-exclusive guard file beside it): the taker re-reads it, moves
it to a name of its own and creates the lock afresh (of several creators, one O_EXCL create wins).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
GUARD_STALE_S = 60.0  # a takeover guard older than this was left by a taker that died (a takeover takes ms)


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says about its holder."""

    owner: str
    host: str
    pid: int
    token: str
    acquired: float
    heartbeat: float


def read_lock(path: Path) -> LockInfo | None:
    """The lock file's holder, or None when it is missing or not (yet) whole JSON."""
    try:
        data = json.loads(Path(path).read_text())
        return LockInfo(**{k: data[k] for k in LockInfo.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class FileLock:
    """One lock file. `acquire()` does not wait; `wait()` polls until it holds or times out."""

    def __init__(self, path: str | Path, *, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
        if not 0 < heartbeat_s < stale_after_s:
            raise ValueError(f"need 0 < heartbeat_s ({heartbeat_s}) < stale_after_s ({stale_after_s})")
        self.path = Path(path)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.token = uuid.uuid4().hex
        self.held = False
        self.lost = False  # another process took it over while we held it (we were thought dead)
        self._acquired = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- holding ------------------------------------------------------------------------------
    def _contents(self, acquired: float) -> bytes:
        host, pid = platform.node(), os.getpid()
        return json.dumps({"owner": f"{host}:{pid}", "host": host, "pid": pid, "token": self.token,
                           "acquired": acquired, "heartbeat": time.time()}).encode()

    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._contents(time.time()))
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def stale(self, info: LockInfo | None) -> bool:
        """Whether the lock file (as read: `info`) belongs to nobody alive."""
        now = time.time()
        if info is None:  # being written, or its writer died mid-write: judged by the file's age
            try:
                return now - self.path.stat().st_mtime > self.stale_after_s
            except FileNotFoundError:
                return False
        if info.host == platform.node() and not _process_exists(info.pid):
            return True
        return now - info.heartbeat > self.stale_after_s

    def _take_over(self, stale: LockInfo | None) -> None:
        """Move the stale lock read (`stale`) out of the way, one taker at a time.

        Takers take turns through a guard file (PATH.takeover, create-exclusive like the lock) and re-read
        the lock under it: a taker that read the stale lock before another replaced it with a live one
        sees the live one and leaves it. Without the guard, moving a live lock aside to put it back leaves
        the path free for a moment, and a third process could create the lock then: two holders.
        """
        guard = self.path.with_name(f"{self.path.name}.takeover")
        try:
            os.close(os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):  # a guard its taker died holding: cleared by age
                if time.time() - guard.stat().st_mtime > GUARD_STALE_S:
                    guard.unlink(missing_ok=True)
            return  # another taker is at it
        try:
            current = read_lock(self.path)
            same = (current is None and stale is None) or (current is not None and stale is not None
                                                            and current.token == stale.token)
            if not same or not self.stale(current):
                return
            grave = self.path.with_name(f"{self.path.name}.stale-{self.token}")
            try:
                os.rename(self.path, grave)
            except FileNotFoundError:
                return  # its holder released it
            moved = read_lock(grave)
            if stale is not None and moved is not None and moved.token != stale.token:
                # the 'stale' holder was alive, released, and someone locked again between our read and the
                # rename (microseconds): put the live lock back
                with contextlib.suppress(FileExistsError):
                    os.link(grave, self.path)
            grave.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def acquire(self) -> bool:
        """Hold the lock if it is free or stale (taking it over); False if a live process holds it."""
        if self.held:
            raise RuntimeError(f"{self.path}: already held by this FileLock")
        if not self._create():
            info = read_lock(self.path)
            if not self.stale(info) or (info is not None and info.token == self.token):
                return False
            self._take_over(info)
            if not self._create():
                return False
        self.held, self.lost, self._acquired = True, False, time.time()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()
        return True

    def wait(self, timeout_s: float, poll_s: float = 0.05) -> None:
        """Acquire, polling; TimeoutError naming the holder after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self.acquire():
            if time.monotonic() > deadline:
                holder = read_lock(self.path)
                raise TimeoutError(f"{self.path}: held by {holder.owner if holder else 'an unknown process'} "
                                   f"for longer than {timeout_s:g} s")
            time.sleep(poll_s)
            poll_s = min(poll_s * 1.5, 1.0)

    def still_held(self) -> bool:
        """Whether the lock file is still ours (not taken over by a process that thought us dead)."""
        info = read_lock(self.path)
        return self.held and info is not None and info.token == self.token

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.still_held():
                self.lost = True
                return
            try:
                with open(self.path, "r+b") as f:  # in place: a rename could replace another holder's file
                    f.write(self._contents(self._acquired))
                    f.truncate()
            except FileNotFoundError:
                self.lost = True
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file, if it is still ours."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.still_held():
            self.path.unlink(missing_ok=True)
        self.held = False


@contextlib.contextmanager
def try_lock(path: str | Path, **kwargs: float) -> Iterator[FileLock | None]:
    """The held lock for the block, or None when a live process holds it."""
    lock = FileLock(path, **kwargs)
    if not lock.acquire():
        yield None
        return
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def hold_lock(path: str | Path, timeout_s: float = 120.0, **kwargs: float) -> Iterator[FileLock]:
    """The lock for the block, waiting up to `timeout_s` for it."""
    lock = FileLock(path, **kwargs)
    lock.wait(timeout_s)
    try:
        yield lock
    finally:
        lock.release()
