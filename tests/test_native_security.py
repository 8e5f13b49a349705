"""safeops.native loader: only a library this user built is loaded; bad caches and compilers
cost a fallback and one warning, never a crash, a hang or someone else's code.

Each scenario runs the ops in a fresh process (a library cannot be unloaded, and a crash
must fail the test, not pytest) against a temporary SAFEOPS_CACHE_DIR, with a stand-in
compiler (test_native_support) so that no scenario compiles for real.
"""

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from safeops import native
from safeops.native import _build
from test_native_support import (PLANTED_C, ROOT, calls, copy_compiler, env_for, mode,
                                 prebuilt_library, run_ops, target_name, write_script)

_PURE_TF_SUM = 3.0  # [1e8, 1, -1e8, 2]: both paths are exact here
_ROOT = os.geteuid() == 0


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_ran(res, loaded):
    assert res["sums"] == [_PURE_TF_SUM, _PURE_TF_SUM]
    assert res["softmax"] == [[0.5, 0.5]]
    assert res["status"]["loaded"] is loaded, res["status"]
    assert not res["planted_ran"], "the planted library's code ran"
    assert len(res["warnings"]) == (0 if loaded else 1), res["warnings"]  # one per process


@pytest.fixture
def planted(tmp_path):
    """A shared object whose constructor writes $PLANTED_MARKER when it is loaded."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the planted library")
    src = tmp_path / "planted.c"
    src.write_text(PLANTED_C)
    out = tmp_path / "planted.so"
    subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(out)], check=True, timeout=120)
    return out


@pytest.fixture
def copy_cxx(tmp_path):
    log = tmp_path / "cxx.log"
    return copy_compiler(tmp_path, prebuilt_library(), log), log


# ------------------------------------------------------------------ the directory, in process

def test_cache_directory_is_created_private(tmp_path):
    d = tmp_path / "a" / "cache"
    assert _build.secure_dir(d, create=True) == d.resolve()
    assert mode(d) == 0o700


@pytest.mark.parametrize("bits", [0o777, 0o707, 0o1777])
def test_cache_directory_writable_by_others_is_refused(tmp_path, bits):
    d = tmp_path / "cache"
    d.mkdir()
    d.chmod(bits)
    with pytest.raises(_build.Unavailable, match="writable by other users"):
        _build.secure_dir(d, create=True)


def test_a_parent_writable_by_others_is_refused_unless_sticky_and_roots(tmp_path):
    shared = tmp_path / "shared"
    (shared / "cache").mkdir(parents=True)
    (shared / "cache").chmod(0o700)
    shared.chmod(0o777)
    with pytest.raises(_build.Unavailable, match="lies in .*shared, writable by other users"):
        _build.secure_dir(shared / "cache", create=False)
    shared.chmod(0o1777)  # like /tmp: others cannot rename or delete what is ours
    if os.stat(shared).st_uid == 0:
        assert _build.secure_dir(shared / "cache", create=False) == (shared / "cache").resolve()
    else:
        with pytest.raises(_build.Unavailable):
            _build.secure_dir(shared / "cache", create=False)


@pytest.mark.skipif(not _ROOT or _nobody() is None, reason="needs root to change a group")
def test_group_writable_only_by_a_private_group(tmp_path):
    """Group write is harmless where no other user is in the group (user-private groups)."""
    d = tmp_path / "cache"
    d.mkdir()
    d.chmod(0o770)
    os.chown(d, os.geteuid(), _nobody().pw_gid)  # nobody's group: another user is in it
    with pytest.raises(_build.Unavailable, match="writable by other users"):
        _build.secure_dir(d, create=False)
    os.chown(d, os.geteuid(), os.getegid())
    if not _build._group_is_private(os.getegid()):  # noqa: SLF001
        pytest.skip("this user's group has other members")
    assert _build.secure_dir(d, create=False) == d.resolve()


def test_a_link_is_checked_where_it_points(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    real.chmod(0o777)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(_build.Unavailable, match="real is writable by other users"):
        _build.secure_dir(tmp_path / "link", create=True)
    real.chmod(0o700)
    assert _build.secure_dir(tmp_path / "link", create=True) == real.resolve()


@pytest.mark.skipif(not _ROOT or _nobody() is None, reason="needs root and user nobody")
def test_cache_directory_or_file_of_another_owner_is_refused(tmp_path):
    nobody = _nobody()
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    os.chown(d, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(_build.Unavailable, match="owned by another user"):
        _build.secure_dir(d, create=True)
    os.chown(d, 0, 0)
    lib, rec = d / "k.so", d / "k.so.sha256"
    lib.write_bytes(b"\x7fELF" + b"\0" * 60)
    rec.write_text(_sha(lib) + "\n")
    assert _build.is_verified(lib)
    os.chown(lib, nobody.pw_uid, nobody.pw_gid)  # the right bytes, the wrong owner
    with pytest.raises(_build.Invalid, match="owned by another user"):
        os.close(_build.open_verified(lib))


def test_hash_record_checked_and_written_atomically(tmp_path):
    lib = tmp_path / "k.so"
    lib.write_bytes(b"library bytes")
    lib.chmod(0o700)
    with pytest.raises(_build.Invalid, match="does not exist"):  # no record: not ours
        os.close(_build.open_verified(lib))
    _build.write_atomic(_build.hash_path(lib), _sha(lib) + "\n")
    assert _build.is_verified(lib)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.so", "k.so.sha256"]  # no temporary
    lib.write_bytes(b"library bytes, changed")
    with pytest.raises(_build.Invalid, match="does not match the SHA-256"):
        os.close(_build.open_verified(lib))
    lib.unlink()
    lib.symlink_to(tmp_path / "k.so.sha256")  # a link is never followed
    with pytest.raises(_build.Invalid, match="cannot be opened"):
        os.close(_build.open_verified(lib))


# ------------------------------------------------------------------ whole processes

@pytest.mark.skipif(not _ROOT or _nobody() is None, reason="needs root to act as user nobody")
def test_library_planted_by_another_user_never_runs(planted, copy_cxx, tmp_path, monkeypatch):
    """`nobody` plants a library and its matching hash in a shared cache: the shared directory
    is refused; once made private again, nobody's files are refused and ours rebuilt."""
    cxx, log = copy_cxx
    shared = Path(tempfile.mkdtemp(prefix="safeops-shared-", dir="/tmp"))
    try:
        shared.chmod(0o777)
        name = target_name(cxx, monkeypatch)
        bait = shared / "bait.so"
        shutil.copy(planted, bait)
        bait.chmod(0o644)
        digest = _sha(bait)
        as_nobody = dict(user="nobody", group=_nobody().pw_gid, check=True, timeout=60)
        subprocess.run(["cp", str(bait), str(shared / name)], **as_nobody)
        subprocess.run(["sh", "-c", f"echo {digest} > '{shared / name}.sha256'"], **as_nobody)
        assert os.stat(shared / name).st_uid == _nobody().pw_uid
        marker = tmp_path / "ran"
        env = env_for(shared, cxx, PLANTED_MARKER=marker)

        res = run_ops(env)
        _check_ran(res, loaded=False)
        assert "writable by other users" in res["status"]["error"]
        assert "writable by other users" in res["warnings"][0]
        assert calls(log) == 0

        shared.chmod(0o700)
        res = run_ops(env)
        _check_ran(res, loaded=True)
        assert calls(log) == 1  # rebuilt (in place of nobody's file), once
        assert os.stat(shared / name).st_uid == os.geteuid()
        assert _sha(shared / name) == (shared / f"{name}.sha256").read_text().strip()
        assert not marker.exists()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_library_with_a_wrong_hash_is_rebuilt_not_loaded(planted, copy_cxx, tmp_path, monkeypatch):
    cxx, log = copy_cxx
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    name = target_name(cxx, monkeypatch)
    shutil.copy(planted, cache / name)  # ours, but not what the build recorded
    (cache / f"{name}.sha256").write_text(_sha(prebuilt_library()) + "\n")
    marker = tmp_path / "ran"
    res = run_ops(env_for(cache, cxx, PLANTED_MARKER=marker))
    _check_ran(res, loaded=True)
    assert calls(log) == 1
    assert _sha(cache / name) == _sha(prebuilt_library())
    assert not marker.exists()


def test_truncated_library_is_rebuilt(copy_cxx, tmp_path, monkeypatch):
    cxx, log = copy_cxx
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    name = target_name(cxx, monkeypatch)
    shutil.copy(prebuilt_library(), cache / name)
    (cache / f"{name}.sha256").write_text(_sha(cache / name) + "\n")
    with open(cache / name, "r+b") as f:
        f.truncate(4096)  # loading this would SIGBUS
    _check_ran(run_ops(env_for(cache, cxx)), loaded=True)
    assert calls(log) == 1
    assert (cache / name).stat().st_size == prebuilt_library().stat().st_size


@pytest.mark.slow
def test_unloadable_build_is_tried_once_and_remembered(tmp_path, monkeypatch):
    """A 'compiler' whose output does not load: one build per process, then remembered."""
    prebuilt_library()
    log = tmp_path / "cxx.log"
    cxx = write_script(tmp_path / "junk-cxx", f"""echo $$ >> '{log}'
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
head -c 4096 /dev/zero > "$out"
""")
    cache = tmp_path / "cache"
    env = env_for(cache, cxx)
    res = run_ops(env)
    _check_ran(res, loaded=False)
    assert "does not load" in res["status"]["error"]
    assert calls(log) == 1
    res = run_ops(env)  # another process: not built again
    _check_ran(res, loaded=False)
    assert "earlier build" in res["warnings"][0] and calls(log) == 1
    name = target_name(cxx, monkeypatch)
    assert not any(p.name.endswith((".tmp", ".tmpdir")) for p in cache.iterdir())
    # `build --force` retries (and fails again, in one line)
    proc = subprocess.run([sys.executable, "-m", "safeops.native", "build", "--force"], env=env,
                          capture_output=True, text=True, check=False, timeout=240, cwd=ROOT)
    assert proc.returncode == 1 and calls(log) == 2
    assert _messages(proc.stderr) == [_messages(proc.stderr)[0]] and name in proc.stderr


def test_hanging_compiler_times_out_and_falls_back(tmp_path, monkeypatch):
    prebuilt_library()
    log = tmp_path / "cxx.log"
    cxx = write_script(tmp_path / "hang-cxx", f"echo $$ >> '{log}'\nexec sleep 600\n")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    name = target_name(cxx, monkeypatch)
    stem = name[:-3]
    gone = _dead_pid()
    (cache / f".{stem}.{gone}.x.tmp").write_bytes(b"left by a killed build")
    old = cache / "tmpabcd.so"  # left by an earlier version's interrupted build
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 7200,) * 2)
    env = env_for(cache, cxx, SAFEOPS_BUILD_TIMEOUT=3)
    start = time.monotonic()
    res = run_ops(env)
    _check_ran(res, loaded=False)
    assert "did not finish within 3 s" in res["warnings"][0]
    assert time.monotonic() - start < 200
    pid = int(log.read_text().split()[0])
    assert _dead(pid), "the hanging compiler was left running"
    leftovers = [p.name for p in cache.iterdir() if p.name.endswith((".tmp", ".tmpdir", ".so"))]
    assert leftovers == [], leftovers
    res = run_ops(env)  # remembered: the next process does not wait again
    _check_ran(res, loaded=False)
    assert calls(log) == 1 and "earlier build" in res["status"]["error"]


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _dead(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] == "Z"


def _messages(stderr):
    """stderr without TensorFlow's start-up logging."""
    noise = ("WARNING: All log messages", "I0000", "W0000", "E0000")
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(noise)]


@pytest.mark.parametrize("case", ["no compiler", "read-only cache",
                                  pytest.param("unsafe cache", marks=pytest.mark.slow)])
def test_build_command_prints_one_line(tmp_path, case):
    prebuilt_library()
    cache, cxx = tmp_path / "cache", shutil.which("c++") or "c++"
    if case == "no compiler":
        cxx = tmp_path / "missing" / "c++"
    elif case == "read-only cache":
        (tmp_path / "file").write_text("not a directory")
        cache = tmp_path / "file" / "cache"
    else:
        cache.mkdir()
        cache.chmod(0o777)
    proc = subprocess.run([sys.executable, "-m", "safeops.native", "build"],
                          env=env_for(cache, cxx), capture_output=True, text=True, check=False,
                          timeout=240, cwd=ROOT)
    lines = _messages(proc.stderr)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("safeops.native"), lines
    assert "Traceback" not in proc.stderr
    assert {"no compiler": "could not be run", "read-only cache": "cannot create cache directory",
            "unsafe cache": "writable by other users"}[case] in lines[0]


def test_status_says_why_not(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEOPS_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o777)
    st = native.status()
    assert not st["built"] and "writable by other users" in st["error"]
    assert st["cache_dir"] == str(tmp_path / "cache")
    monkeypatch.setenv("SAFEOPS_NATIVE", "0")
    assert native.status()["state"] == "disabled"


def test_compiler_timeout_is_bounded_when_a_child_leaves_its_group(tmp_path):
    """A compiler child in its own session keeps the output pipes open: the build still ends
    at its deadline (the pipes are abandoned, the compiler's group killed)."""
    pidfile = tmp_path / "escaped.pid"
    cmd = ["sh", "-c", f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & exec sleep 600"]
    start = time.monotonic()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            _build._run(cmd, time.monotonic() + 1.0, dict(os.environ))  # noqa: SLF001
        assert time.monotonic() - start < 20
    finally:
        for _ in range(50):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.1)
        if pidfile.exists() and pidfile.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_a_fallback_build_warns_with_the_first_failure(tmp_path):
    # a build for this CPU that fails to compile and a generic one that succeeds: the
    # library is the generic one, and the user is told why
    d = _build.secure_dir(tmp_path / "cache", create=True)
    cxx = write_script(tmp_path / "cxx", """out=""
native=0
while [ $# -gt 0 ]; do
  [ "$1" = "-o" ] && out="$2"
  [ "$1" = "-march=native" ] && native=1
  shift
done
if [ $native = 1 ]; then echo "kernel.cc:1: error: planted failure" >&2; exit 1; fi
echo generic > "$out"
""")
    commands = [lambda out: ["-march=native", "-o", out], lambda out: ["-o", out]]
    target = d / "lib.so"
    with pytest.warns(RuntimeWarning, match="fallback flags after .*planted failure"):
        _build.compile_into(target, str(cxx), commands, 30.0)
    assert target.read_text() == "generic\n" and _build.is_verified(target)
    # the first flag set compiling: no warning
    target.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _build.compile_into(target, str(cxx), commands[1:], 30.0)
