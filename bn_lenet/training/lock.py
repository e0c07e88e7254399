"""One process per run directory at a time: the lock a process holds while it trains or resumes a run.

``RUN.lock``, next to the run directory ``RUN`` (not inside it: a new run's directory must be empty, and a
sweep deletes and remakes a run killed before its first epoch), holds the holder as JSON: host, boot id, pid,
command, since when. It is taken atomically: written and OS-locked (flock) under a temporary name, then
hard-linked to ``RUN.lock``, which fails when the file is there. The OS drops a flock when its process dies,
however it dies, so a lock found in place is:

- held when its flock cannot be taken; where the file system has no flock, or the flock could be taken,
  it is judged by its holder: on this host (same boot), held while its pid lives (os.kill(pid, 0), not a
  zombie); on this host after a reboot, stale; on another host, held unless the flock could be taken.
- stale otherwise (its holder was killed, or the machine rebooted): taken over, and the run resumes from
  its checkpoint.

A process takes a lock it already holds again at no cost (a sweep worker holds it before it looks at the run,
then trains it), and so do the processes of a torchrun job launched by the holder (launch.py passes the
holder's pid in BN_LENET_LOCK_HOLDER): they train the run their launcher holds. Leaving ``holding`` releases
it (the file is removed) however the block ends: finished, diverged, interrupted, failed, Ctrl-C.

Without flock (some network file systems), two processes that find the same stale lock at the same moment
may both take it over; with flock only one can.
"""

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: judged by the holder alone
    fcntl = None

HOLDER_ENV = "BN_LENET_LOCK_HOLDER"  # "PID:LOCK PATH": the launcher of this torchrun job holds that lock


class Held(UserError):
    """The run directory is being trained by another live process (``holder``: what its lock file says)."""

    def __init__(self, run_dir, holder: dict):
        self.holder = holder
        super().__init__(f"{run_dir} is being trained by another process ({describe(holder)}); wait until it "
                         f"ends, or stop it (a killed holder's lock is taken over and its run resumes)")


def describe(holder: dict) -> str:
    """'pid 123 on host h, `bn-lenet sweep ...`, since 2024-...' (what is known of the holder)."""
    if not holder:
        return "its lock file does not say which"
    parts = [f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"]
    if holder.get("command"):
        parts.append(f"`{holder['command']}`")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)


def lock_path(run_dir) -> Path:
    """RUN.lock beside RUN; one file for every spelling of the path (relative, absolute, through a link)."""
    run_dir = Path(run_dir).resolve()
    return run_dir.with_name(run_dir.name + ".lock")


def _boot_id() -> str:
    try:  # Linux: a new one at every boot, so a lock from before a reboot is known to be stale
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


HOST, BOOT = socket.gethostname(), _boot_id()


def _command() -> str:
    """This process's command line, as typed: ``python -m bn_lenet ...`` rather than a path to __main__.py."""
    argv = list(sys.argv) or ["python"]
    if argv[0].endswith("__main__.py"):
        argv[0] = f"python -m {Path(argv[0]).parent.name}"
    else:
        argv[0] = Path(argv[0]).name
    return " ".join(argv)[:300]


def _me() -> dict:
    return {"host": HOST, "boot": BOOT, "pid": os.getpid(), "command": _command(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (ValueError, TypeError, OverflowError):
        return False
    try:  # a killed process its parent has not reaped yet still answers os.kill: it is dead
        return Path(f"/proc/{int(pid)}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _ours(holder: dict, path: Path) -> bool:
    """This process holds the lock at ``path``, or the launcher of the torchrun job this process is in does."""
    if holder.get("host") != HOST or holder.get("boot") != BOOT:
        return False
    launcher, _, launched = os.environ.get(HOLDER_ENV, "").partition(":")
    return holder.get("pid") == os.getpid() or (str(holder.get("pid")) == launcher and launched == str(path))


def _alive(holder: dict, flock_taken: bool) -> bool:
    """Whether the holder of a lock whose flock we could take (or which has none) still trains."""
    if not holder:  # written before it was linked into place: an empty or garbled lock file is damaged
        return False
    if holder.get("host") == HOST:
        return holder.get("boot") == BOOT and _pid_alive(holder.get("pid"))
    return not flock_taken  # another host: only its flock can say it is gone


def _flock(fd: int):
    """True: taken; False: another process holds it; None: this file system has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, ...: no OS lock here
        return None


def _read(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 65536, 0).decode())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(fd: int, holder: dict) -> None:
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def acquire(run_dir, hint: str = ""):
    """Take the lock of ``run_dir``. Returns a handle for ``release`` (None: this process or its launcher
    already holds it). Raises Held when another live process holds it; a UserError (ending in ``hint``) when
    the lock file cannot be written."""
    path = lock_path(run_dir)
    mine = _me()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise UserError(f"cannot write the run directory {run_dir} (its lock file {path}: {e.strerror or e})"
                        f"{'; ' + hint if hint else ''}") from None
    try:
        _flock(fd)
        _write(fd, mine)
        for attempt in range(50):  # a lock released or taken over between two looks: look again
            try:
                os.link(tmp, path)  # atomic: fails if a lock is there
                return {"path": path, "fd": fd}
            except FileExistsError:
                pass
            except OSError:  # no hard links here: create it exclusively (written just after, not before)
                try:
                    other = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    pass
                else:
                    _flock(other)
                    _write(other, mine)
                    os.close(fd)
                    fd = -1
                    return {"path": path, "fd": other}
            try:
                verdict, holder, other = _judge(path, take=True)
            except OSError as e:
                raise UserError(f"cannot read the lock file {path} of {run_dir}: {e.strerror or e}") from None
            if verdict == "ours":
                return None
            if verdict == "held":
                if attempt < 10 and (not holder or holder.get("host") == HOST and not _alive(holder, True)):
                    time.sleep(0.05)  # its holder is gone and another process is taking it over: see who wins
                    continue
                raise Held(run_dir, holder)
            if verdict == "stale" and other is not None:  # we hold its flock: take it over in place
                _write(other, mine)
                os.close(fd)
                fd = -1
                return {"path": path, "fd": other}
            if verdict == "stale":  # no flock here: remove it and race for a new one (see the module's doc)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise UserError(f"the lock {path} of {run_dir} is stale ({describe(holder)}, no longer "
                                    f"running) but cannot be removed: {e.strerror or e}") from None
        raise UserError(f"could not take the lock {path} of {run_dir}: other processes keep taking it; try again")
    finally:
        if fd >= 0 and not _same_file(fd, path):  # (the same file: linked into place, ours to keep open)
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _judge(path: Path, take: bool):
    """('ours' | 'held' | 'stale' | 'gone', holder, fd): what the lock file at ``path`` is now. With ``take``,
    a stale lock whose flock was taken comes back with its fd still open and locked (to take it over)."""
    writable = True
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return "gone", {}, None
    except PermissionError:  # readable only (another user's, a read-only copy): judged, not taken over in place
        fd, writable = os.open(path, os.O_RDONLY), False
    keep = False
    try:
        taken = _flock(fd)
        if not _same_file(fd, path):  # released and removed, or replaced, meanwhile
            return "gone", {}, None
        holder = _read(fd)
        if _ours(holder, path):
            return "ours", holder, None
        if taken is False or _alive(holder, flock_taken=bool(taken)):
            return "held", holder, None
        keep = take and bool(taken) and writable
        return "stale", holder, (fd if keep else None)
    finally:
        if not keep:
            os.close(fd)


def release(handle) -> None:
    """Remove the lock file (if it is still the one taken), then drop the flock with the file."""
    if handle is None:
        return
    try:
        if _same_file(handle["fd"], handle["path"]):
            os.unlink(handle["path"])
    finally:
        os.close(handle["fd"])


@contextmanager
def holding(run_dir, hint: str = ""):
    """Hold the lock of ``run_dir`` inside the block (see ``acquire``)."""
    handle = acquire(run_dir, hint)
    try:
        yield
    finally:
        release(handle)


def holder(run_dir):
    """What the lock file of ``run_dir`` says when another live process holds it, else None (read only)."""
    path = lock_path(run_dir)
    if not path.exists():
        return None
    try:
        verdict, found, _ = _judge(path, take=False)
    except OSError:
        return None
    return found if verdict == "held" else None


def inherited_env(run_dir) -> dict:
    """The environment that lets the torchrun job this process launches train the run whose lock it holds."""
    return {HOLDER_ENV: f"{os.getpid()}:{lock_path(run_dir)}"}
