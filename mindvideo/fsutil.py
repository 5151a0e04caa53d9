"""Writing outputs without harming what is already there.

* Files and folders appear whole: they are written under a hidden temporary sibling name and renamed into place, and
  the temporary name is removed on any failure (:func:`atomic_folder`, :func:`temp_file`).
* They get the permissions of any new file under the umask (``0o666 & ~umask``, folders ``0o777 & ~umask``), not
  the private 0600 / 0700 of :mod:`tempfile` (or of writers such as safetensors).
* A command's output folder (``--out``) replaces only an earlier output of the same command. Each such folder holds
  a small marker, ``.mindvideo-output.json`` (``{"command": "data simulate", "mindvideo": "0.1.0", ...}``).
  :func:`check_output_folder` accepts a path that does not exist, an empty folder, or, with ``overwrite``, a folder
  whose marker names the same command. Anything else (a folder holding other files, a file, a symbolic link, the
  current folder or one above it) is refused with a :class:`MindVideoError` and left untouched.
* A staging folder (``.OUT.<random>``) holds a marker, ``.mindvideo-staging.json`` (pid, host, creation time).
  While one exists, SIGTERM (when nothing else handles it) removes it and ends the process with exit code 143
  (128 + 15). Folders left by a killed run (SIGKILL, power loss) are removed by the next :func:`atomic_folder` on
  the same path: only siblings named ``.OUT.*`` that hold the marker, were created before the running process
  started and whose process (on this host) is gone; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from mindvideo.errors import MindVideoError

MARKER = ".mindvideo-output.json"
STAGING_MARKER = ".mindvideo-staging.json"
TERMINATED_EXIT_CODE = 128 + signal.SIGTERM  # the shell's code for a process ended by SIGTERM

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder under the current umask."""
    return 0o777 & ~current_umask()


def temp_file(path: str | Path) -> Path:
    """A new, empty, hidden sibling of ``path`` with the same suffix and a new file's mode; the caller renames it
    into place (``os.replace``) or removes it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise MindVideoError(f"expected a writable folder for {path}", str(exc), "check the path") from None
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would make the output private
    finally:
        os.close(fd)
    return Path(tmp)


def publish_modes(folder: str | Path) -> None:
    """Give the files and folders under ``folder`` the modes of new ones under the umask (execute bits kept): some
    writers (safetensors, :mod:`tempfile`) create private 0600 files."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if not os.path.islink(path := os.path.join(root, name)):
                os.chmod(path, 0o777 & ~mask)
        for name in files:
            if not os.path.islink(path := os.path.join(root, name)):
                os.chmod(path, (0o666 | (os.lstat(path).st_mode & 0o111)) & ~mask)


# --------------------------------------------------------------------------------------------------- output folders


def output_owner(folder: str | Path) -> str | None:
    """The command named by ``folder``'s marker, ``None`` without a readable marker."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    command = data.get("command") if isinstance(data, dict) else None
    return command if isinstance(command, str) else None


def write_marker(folder: str | Path, command: str) -> None:
    """Mark ``folder`` as the output of ``mindvideo <command>``."""
    from mindvideo import __version__

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {"command": command, "mindvideo": __version__, "created": created}
    (Path(folder) / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def check_output_folder(
    path: str | Path,
    command: str,
    *,
    overwrite: bool = False,
    recognise: Callable[[Path], bool] | None = None,
) -> None:
    """Refuse ``path`` as the output folder of ``mindvideo <command>`` unless it is new, empty, or (with
    ``overwrite``) an earlier output of the same command. ``recognise(path)`` may identify an earlier output written
    before markers existed."""
    path = Path(path)
    check_not_cwd(path)
    if path.is_symlink():
        raise MindVideoError(
            "expected a folder for the output, not a symbolic link",
            f"{path} -> {os.readlink(path)}",
            "pass the link's target itself, or choose another folder",
        )
    if not path.exists():
        return
    if not path.is_dir():
        raise MindVideoError("expected a folder for the output", f"a file at {path}", "choose another path")
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise MindVideoError(f"expected a readable folder at {path}", str(exc), "choose another folder") from None
    if not entries:
        return
    owner = output_owner(path)
    if owner is None and recognise is not None and recognise(path):
        owner = command
    if owner is None:
        shown = next(e for e in entries if e != MARKER) if entries != [MARKER] else MARKER
        more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
        raise MindVideoError(
            f"expected a new or empty folder for the output of `mindvideo {command}`",
            f"{path} with files not marked as a mindvideo output ({shown!r}{more})",
            "choose another folder (mindvideo replaces only a folder it marked as its own output)",
        )
    if owner != command:
        raise MindVideoError(
            f"expected a new or empty folder for the output of `mindvideo {command}`",
            f"{path} holding the output of `mindvideo {owner}`",
            "choose another folder",
        )
    if not overwrite:
        raise MindVideoError(
            "expected a new or empty output folder",
            f"an earlier `mindvideo {command}` output at {path}",
            "pass --overwrite to replace it, or choose another folder",
        )


def check_not_cwd(path: str | Path) -> None:
    """Refuse the current folder or one above it as a folder to be replaced."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the current folder was deleted: nothing to protect
        return
    target = Path(path).resolve()
    if target == cwd or target in cwd.parents:
        raise MindVideoError(
            "expected an output folder other than the current folder or one above it",
            f"{path} (= {target})",
            "choose a new folder, e.g. --out ./out",
        )


def atomic_folder(
    path: str | Path,
    command: str | None = None,
    *,
    overwrite: bool = False,
    recognise: Callable[[Path], bool] | None = None,
) -> _AtomicFolder:
    """Context manager: yields a hidden temporary sibling folder that replaces ``path`` only if the block succeeds
    (on any error it is removed and ``path`` is left as it was).

    With ``command`` (a command's ``--out``), ``path`` is checked by :func:`check_output_folder` before the block
    and again before the replacement, and the new folder gets the marker naming ``command``. Without it (parts of
    an output, caches) an existing ``path`` is replaced unchecked.
    """
    return _AtomicFolder(Path(path), command, overwrite, recognise)


class _AtomicFolder:
    def __init__(self, path: Path, command: str | None, overwrite: bool, recognise) -> None:
        self.given = path  # as the user wrote it, for messages
        self.path = Path(os.path.abspath(path))  # "out/.." and "." normalised: the renames need a real name
        self.command, self.overwrite, self.recognise = command, overwrite, recognise

    def _check(self) -> None:
        if self.command is None:
            check_not_cwd(self.given)
        else:
            check_output_folder(self.given, self.command, overwrite=self.overwrite, recognise=self.recognise)

    def __enter__(self) -> Path:
        self._check()
        self.handles_term = _TERM.enter()  # before the folder exists: SIGTERM from now on removes it
        try:
            self.tmp = self._make_staging()
        except BaseException:
            if self.handles_term:
                _TERM.leave()
            raise
        return self.tmp

    def _make_staging(self) -> Path:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.path)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        except OSError as exc:
            raise MindVideoError(f"expected a writable folder for {self.given}", str(exc), "check the path") from None
        try:
            _write_staging_marker(tmp)
            tmp.chmod(folder_mode())  # mkdtemp makes 0700; the result should look like any new folder
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                message = f"expected a writable folder for {self.given}"
                raise MindVideoError(message, str(exc), "check the path") from None
            raise
        return tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                if issubclass(exc_type, Terminated):
                    log.warning("terminated: removing the unfinished %s", self.tmp)
                shutil.rmtree(self.tmp, ignore_errors=True)
                return
            try:
                self._check()  # the folder may have changed during a long run
                if self.command is not None:
                    write_marker(self.tmp, self.command)
                (self.tmp / STAGING_MARKER).unlink(missing_ok=True)
                publish_modes(self.tmp)
                self._replace()
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        finally:
            if self.handles_term:
                _TERM.leave()

    def _replace(self) -> None:
        if not os.path.lexists(self.path):
            os.replace(self.tmp, self.path)
            return
        old = self.tmp.with_name(f"{self.tmp.name}-old")
        os.replace(self.path, old)
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            os.replace(old, self.path)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------- staging folders


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM while a staging folder exists: the ``with`` blocks unwind (removing
    their staging folders) and the process exits with :data:`TERMINATED_EXIT_CODE`."""

    def __init__(self) -> None:
        super().__init__(TERMINATED_EXIT_CODE)


class _TermHandler:
    """Installs the SIGTERM handler while at least one staging folder is open (main thread only, and only where
    SIGTERM has its default action: a handler someone else installed is left alone)."""

    def __init__(self) -> None:
        self.depth, self.pid = 0, 0

    def enter(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        if self.depth == 0:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return False
            signal.signal(signal.SIGTERM, self.handle)
            self.pid = os.getpid()
        self.depth += 1
        return True

    def leave(self) -> None:
        self.depth -= 1
        if self.depth == 0 and signal.getsignal(signal.SIGTERM) == self.handle:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # a forked child (a data-loader worker): end as SIGTERM does by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()


_TERM = _TermHandler()


def process_start_time() -> float:
    """When this process started (s since the epoch): from /proc on Linux, else when this module was imported."""
    try:  # both in seconds since boot: the process's age, without the wall clock's drift since boot
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - int(after_name[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


def _write_staging_marker(folder: Path) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}
    (folder / STAGING_MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user's) or cannot be asked: treat as alive
    return True


def is_stale_staging(folder: Path, started: float | None = None) -> bool:
    """``folder`` is a staging folder left by a process that is gone: it holds a readable staging marker from this
    host, created before this process started (``started``), whose pid is not running."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        record = json.loads((folder / STAGING_MARKER).read_text(encoding="utf-8"))
        pid, host, created = int(record["pid"]), str(record["host"]), float(record["created"])
    except (OSError, ValueError, TypeError, KeyError):
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    return created < (process_start_time() if started is None else started) and not _pid_alive(pid)


def remove_stale_staging(path: str | Path) -> list[Path]:
    """Remove the staging folders of ``path`` (siblings ``.NAME.*``) left by killed runs; returns them."""
    path = Path(os.path.abspath(path))
    started, removed = process_start_time(), []
    for candidate in path.parent.glob(f".{glob_escape(path.name)}.*"):
        if is_stale_staging(candidate, started):
            log.info("removing %s, the unfinished output of a killed run", candidate)
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


# --------------------------------------------------------------------------------------------------- folder locks

_LOCKS_HELD: dict[str, int] = {}


@contextlib.contextmanager
def folder_lock(path: str | Path, command: str) -> Iterator[Path]:
    """Hold an exclusive lock on writing the folder ``path`` for the block: ``.NAME.lock`` beside it, locked with
    ``fcntl.flock`` and removed on release (a crash releases the lock with the process). A second process asking
    for it is refused at once with a :class:`MindVideoError` naming the holder; the same process may nest it."""
    path = Path(os.path.abspath(path))
    lock = path.parent / f".{path.name}.lock"
    if str(lock) in _LOCKS_HELD:
        _LOCKS_HELD[str(lock)] += 1
        try:
            yield lock
        finally:
            _LOCKS_HELD[str(lock)] -= 1
        return
    fd = _acquire(lock, path, command)
    _LOCKS_HELD[str(lock)] = 1
    try:
        yield lock
    finally:
        del _LOCKS_HELD[str(lock)]
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still holding it: a process waiting on this file sees it gone and starts over
        os.close(fd)


def _acquire(lock: Path, path: Path, command: str) -> int:
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MindVideoError(f"expected a writable folder for {path}", str(exc), "check the path") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
        except OSError as exc:
            raise MindVideoError(f"expected to create the lock file {lock}", str(exc), "check the folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise MindVideoError(
                f"expected no other `mindvideo {command}` writing {path}",
                f"one running ({holder}; lock {lock})",
                "wait for it to finish, or choose another --out",
            ) from None
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the holder released and removed that file meanwhile: lock the new one
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
    return fd


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        since = datetime.fromtimestamp(float(record["since"]), timezone.utc).isoformat(timespec="seconds")
        return f"pid {int(record['pid'])} on {record['host']}, since {since}"
    except (OSError, ValueError, TypeError, KeyError):
        return "another process"
