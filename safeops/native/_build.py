"""The fused kernels' shared object on disk: a private cache, a recorded hash, bounded waits.

Only a library this user built is ever loaded (threat model in docs/native.md):

* the cache directory must be owned by this user and writable by nobody else,
  and every directory above it owned by this user or root and writable by
  nobody else unless it is sticky and root's (``/tmp``); otherwise it is refused;
* the build records the shared object's SHA-256 beside it (written atomically);
  before every load the file is opened without following links, its owner and
  mode are checked, its bytes hashed and compared with the record, and that
  very open file is what is loaded (``/proc/self/fd``), so a file swapped
  after the check is never the one loaded;
* the compiler runs in its own process group under a deadline (killed with
  its children when it passes), builds are serialised by a file lock waited
  on with a timeout, a failed build is remembered (keyed by the compiler's
  identity and the flags) so that other processes do not retry it, and
  temporary files are removed, including those a killed build left.

Everything here raises `Unavailable` with a one-line reason.
"""

import contextlib
import fcntl
import functools
import grp
import hashlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

__all__ = ["Invalid", "Unavailable"]

_STALE_AGE_S = 24 * 3600     # a temporary file of a live process is removed only after this
_OLD_TMP_AGE_S = 3600        # ``tmp*.so`` left by earlier versions (no pid in the name)
_DEFAULT_TIMEOUT_S = 300.0


class Unavailable(RuntimeError):
    """The kernels cannot be built or loaded here; the message says why (one line).

    Args:
      message: why, in one line (the first argument, as for any RuntimeError).
    """


class Invalid(Unavailable):
    """The cached file is missing, not ours, does not match its recorded hash, or does not load."""


def build_timeout():
    """Seconds one build may take, all compiler attempts together (``$SAFEOPS_BUILD_TIMEOUT``)."""
    raw = os.environ.get("SAFEOPS_BUILD_TIMEOUT", "")
    try:
        value = float(raw) if raw.strip() else _DEFAULT_TIMEOUT_S
    except ValueError:
        value = _DEFAULT_TIMEOUT_S
    return value if value > 0 else _DEFAULT_TIMEOUT_S


# ----------------------------------------------------------------------------- the directory

@functools.lru_cache(maxsize=None)
def _group_is_private(gid):
    """True when no user but this one belongs to group gid (a user-private group)."""
    uid = os.geteuid()
    try:
        me = pwd.getpwuid(uid).pw_name
        members = grp.getgrgid(gid).gr_mem
        everyone = pwd.getpwall()
    except (KeyError, OSError):
        return False
    return (all(m == me for m in members)
            and all(p.pw_gid != gid or p.pw_uid == uid for p in everyone))


def _others_can_write(st):
    return bool(st.st_mode & stat.S_IWOTH
                or (st.st_mode & stat.S_IWGRP and not _group_is_private(st.st_gid)))


def _refuse(path, why):
    return Unavailable(f"cache directory {path} {why}; refusing to load code from it "
                       f"(make it yours with mode 0700, or set SAFEOPS_CACHE_DIR to one that is)")


def secure_dir(path, create):
    """The resolved cache directory, created private (0700) if `create`; `Unavailable` if unsafe.

    Symbolic links are resolved first and every later access goes through the
    resolved path, whose directories no other user can change (checked here).
    """
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as err:
            raise Unavailable(f"cannot create cache directory {path}: "
                              f"{err.strerror or err}") from None
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except OSError as err:
        raise Unavailable(f"cache directory {real}: {err.strerror or err}") from None
    uid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(real, "is not a directory")
    if st.st_uid != uid:
        raise _refuse(real, f"is owned by another user (uid {st.st_uid})")
    if _others_can_write(st):
        raise _refuse(real, f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})")
    for parent in real.parents:
        pst = os.stat(parent)
        if pst.st_uid not in (0, uid):
            raise _refuse(real, f"lies in {parent}, owned by another user (uid {pst.st_uid})")
        sticky_root = pst.st_mode & stat.S_ISVTX and pst.st_uid == 0
        if _others_can_write(pst) and not sticky_root:
            raise _refuse(real, f"lies in {parent}, writable by other users "
                                f"(mode {stat.S_IMODE(pst.st_mode):04o})")
    return real


# ----------------------------------------------------------------------------- verification

def _open_own(path):
    """fd of path opened read-only without following a link; Invalid unless it is a regular
    file of this user that nobody else can write."""
    try:
        # O_NONBLOCK: a FIFO in its place must not block the open (it is rejected below)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise Invalid(f"{path} does not exist") from None
    except OSError as err:
        raise Invalid(f"{path} cannot be opened: {err.strerror or err}") from None
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "is not a regular file"
    elif st.st_uid != os.geteuid():
        why = f"is owned by another user (uid {st.st_uid})"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        why = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    if why:
        os.close(fd)
        raise Invalid(f"{path} {why}")
    return fd


def _hash_fd(fd):
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    return h.hexdigest()


def hash_path(path):
    return path.with_name(path.name + ".sha256")


def open_verified(path):
    """An fd of `path` whose bytes match the SHA-256 recorded at build time; Invalid otherwise."""
    fd = _open_own(path)
    try:
        digest = _hash_fd(fd)
        rec_fd = _open_own(hash_path(path))
        try:
            recorded = os.read(rec_fd, 200).decode("ascii", "replace").strip()
        finally:
            os.close(rec_fd)
        if recorded != digest:
            raise Invalid(f"{path} does not match the SHA-256 recorded when it was built")
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_verified(path):
    try:
        os.close(open_verified(path))
    except Invalid:
        return False
    return True


def write_atomic(path, text):
    """Write text to path through a private temporary file, fsync, rename (never half-written)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- failures

def _compiler_identity(cxx):
    """The compiler's resolved path, size and mtime: a failure is forgotten when it changes."""
    path = shutil.which(cxx) or cxx
    try:
        st = os.stat(path)
        return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return path


def failure_path(target, cxx):
    ident = hashlib.sha256(_compiler_identity(cxx).encode()).hexdigest()[:12]
    return target.with_name(f"{target.stem}.{ident}.failed")


def remembered_failure(target, cxx):
    """The reason an earlier build with this compiler and these flags failed, or None."""
    try:
        fd = _open_own(failure_path(target, cxx))
    except Invalid:
        return None
    try:
        return json.loads(os.read(fd, 1 << 16).decode("utf-8", "replace")).get("error", "unknown")
    except (ValueError, AttributeError):
        return "unknown"
    finally:
        os.close(fd)


def remember_failure(target, cxx, error):
    with contextlib.suppress(OSError):
        write_atomic(failure_path(target, cxx), json.dumps({"compiler": cxx, "error": error}))


def forget_failure(target, cxx):
    with contextlib.suppress(OSError):
        os.unlink(failure_path(target, cxx))


# ----------------------------------------------------------------------------- building

@contextlib.contextmanager
def file_lock(path, timeout):
    """An exclusive lock on `path` (created 0600), waited for at most `timeout` seconds."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise Unavailable(f"cannot create lock file {path}: {err.strerror or err}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable(f"another process held the build lock {path} for over "
                                      f"{timeout:.0f} s") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def clean_stale(directory, stem):
    """Remove temporary files of builds that were killed (pid gone) or are a day old."""
    now = time.time()
    for entry in os.scandir(directory):
        name = entry.name
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        stale = False
        if name.startswith(f".{stem}.") and name.endswith((".tmp", ".tmpdir")):
            try:  # ".<file name>.<pid>.<random>.tmp" (tempfile's random part has no dot)
                pid = int(name.split(".")[-3])
            except ValueError:
                pid = -1
            stale = age > _STALE_AGE_S or pid <= 0 or not _pid_alive(pid)
        elif name.startswith("tmp") and name.endswith(".so"):
            stale = age > _OLD_TMP_AGE_S
        if stale:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)


def _run(cmd, deadline, env):
    """(returncode, stderr) of cmd in a new process group; the group is killed at the deadline."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    try:
        _, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
        return proc.returncode, err
    except BaseException:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        # a child that left the group (setsid) may hold the pipes open for ever: read what
        # comes for a moment, then close them and reap the killed leader
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=2.0)
        for pipe in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()
        proc.wait()
        raise


def compile_into(target, cxx, commands, timeout):
    """Compile with the first command of `commands` (each a function of the output path) that
    succeeds, into `target` with its hash recorded. The caller holds the build lock.

    A later command that succeeds after an earlier one failed (a build for this CPU that
    does not compile, built for the generic one instead) warns with the first failure:
    kernels whose vectorised paths compile only for this CPU would otherwise run their
    slower portable paths without a word."""
    directory, stem = target.parent, target.stem
    clean_stale(directory, stem)
    deadline = time.monotonic() + timeout
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)  # (a sanitizer runtime preloaded into Python is not the compiler's)
    last = "no flag set was tried"
    failed = []
    for command in commands:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.{os.getpid()}.", suffix=".tmp", dir=directory)
        os.close(fd)
        scratch = tempfile.mkdtemp(prefix=f".{stem}.{os.getpid()}.", suffix=".tmpdir",
                                   dir=directory)
        env["TMPDIR"] = scratch  # the compiler's own temporary files, removed below
        try:
            try:
                rc, err = _run([cxx, *command(tmp)], deadline, env)
            except subprocess.TimeoutExpired:
                last = f"the compiler {cxx} did not finish within {timeout:g} s (killed)"
                break
            except OSError as err_:
                last = f"the compiler {cxx} could not be run: {err_.strerror or err_}"
                break
            if rc == 0:
                os.chmod(tmp, 0o700)
                fd = _open_own(tmp)
                try:
                    digest = _hash_fd(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, target)  # atomic: a reader sees the old file or the new one
                write_atomic(hash_path(target), digest + "\n")
                if failed:
                    warnings.warn(f"safeops.native: built with fallback flags after "
                                  f"{failed[0]}", RuntimeWarning, stacklevel=2)
                return
            lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
            errors = [ln for ln in lines if "error" in ln.lower()] or lines or ["(no output)"]
            last = f"{cxx} exited with status {rc}: {errors[0]}"
            failed.append(last)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            shutil.rmtree(scratch, ignore_errors=True)
    raise Unavailable(f"compilation failed: {last}")
