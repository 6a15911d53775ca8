"""Every path bertjax reads or writes: a local path or an object-store URI (`gs://bucket/key`).

This module sits at the bottom of the import graph (it imports no other bertjax or
data_pipelines module), so the library and the data pipelines both use it. Paths are
`etils.epath.Path`, the path type Orbax itself uses; `gs://` goes through fsspec's gcsfs
(which honours `STORAGE_EMULATOR_HOST`), Orbax's arrays through tensorstore.

    path(p) / abspath(p)         epath.Path / str; local paths made absolute, URIs kept as
                                 they are (never os.path.abspath on a URI)
    is_remote, join, dirname     URI-aware path arithmetic on strings
    exists, isdir, isfile, listdir, glob, holds_files
    open_file, read_text, read_bytes, read_json     a missing file/bucket/object: one line
    makedirs, remove, rmtree, copy_file
    file_mode, dir_mode          0o666 / 0o777 less the umask (read once), as open() gives
    temp_dir_beside(out)         an empty directory to be renamed onto out, mode dir_mode()
    atomic_open(p, mode)         a file whose content appears at p whole or not at all
    write_text / write_bytes / write_json           through atomic_open
    publish_dir(out, write, ...) a directory that appears at out whole or not at all
    local_copy(p)                a local copy of a URI for readers of local files only
    require_local(p, what)       one-line error where a URI cannot be used (ArrayRecord)
    require_extra(module, what)  a module of an optional extra (TensorFlow for TFDS, TF1
                                 checkpoints, TFRecord), or one line naming the extra
    check_writable(dir)          probe write + delete: fail before compiling, not at step N
    workdir_lock(dir)            one run at a time in a directory (DIR/.lock), or one line
    remove_stale_temps(out)      the `.NAME.tmp-*` siblings an interrupted writer left

How "whole or not at all" is kept:
- a local file is written to a temporary name in the same directory and `os.replace`d; a
  local directory is written under a temporary sibling name and renamed (the old one, with
  overwrite, is moved aside first and removed only once the new one is in place).
- an object store has no rename. A file is written as a temporary object beside the target
  and then copied onto it server-side (write-to-temporary-object-then-copy: the target
  object is created in one step). A directory is written to a local temporary directory and
  its files uploaded with its *completion marker* (the file whose presence makes the
  directory valid to its readers, `bertjax_config.json` of a model directory) uploaded last
  and, when replacing, removed first: a reader never takes a half-uploaded directory for a
  finished one.
- Orbax checkpoints keep Orbax's own commit protocol (a temporary directory renamed
  locally; a `commit_success.txt` object in a bucket); only committed steps are listed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

# epath picks tf.io.gfile for gs:// when TensorFlow is installed (the `tf` extra, for TFDS
# and TF1 checkpoints); gcsfs is the backend that honours STORAGE_EMULATOR_HOST and needs no
# probe of the bucket's storage layout, so it is the one used, for bertjax's files and Orbax's.
os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs's experimental file system asks the Storage Control API for every bucket's layout
# (zonal / hierarchical namespace) first; the plain one serves every bucket.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import filelock  # noqa: E402
import fsspec  # noqa: E402
from etils import epath  # noqa: E402

# No listing cache: another process (a second host, Orbax's tensorstore writes) changes a
# bucket behind this one's back, and a stale listing would hide a finished checkpoint.
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)

Path = epath.Path
PathLike = str | os.PathLike
_SCHEMES = ("gs://", "s3://")
FUSE_RECIPE = (
    "mount the bucket with Cloud Storage FUSE and pass the mounted path (README: "
    "'Running on a TPU pod / GPU cluster')"
)


def _read_umask() -> int:
    """The process's umask. Linux reports it in /proc/self/status, read without changing it;
    elsewhere it is read by setting a private 0o077 and restoring it at once (a file another
    thread creates in between comes out more private, never less)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


# Read once: bertjax never changes its umask. Temporary files and directories (mkstemp,
# mkdtemp: 0600 / 0700) are given the mode open() and os.makedirs would have given them
# before they are renamed into place, so outputs follow the user's umask.
_UMASK = _read_umask()


def file_mode() -> int:
    """The mode open() gives a new file: 0o666 without the umask's bits."""
    return 0o666 & ~_UMASK


def dir_mode() -> int:
    """The mode os.makedirs gives a new directory: 0o777 without the umask's bits."""
    return 0o777 & ~_UMASK


def temp_dir_beside(out: PathLike, prefix: str | None = None) -> str:
    """A new empty local directory in out's parent (created if missing), named
    `prefix` + a random suffix (default `.NAME.tmp-`), with the mode os.makedirs gives
    (`dir_mode`), to be renamed onto out once complete."""
    parent, name = os.path.split(os.path.abspath(os.fspath(out)))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-" if prefix is None else prefix, dir=parent)
    try:
        os.chmod(tmp, dir_mode())
    except BaseException:
        os.rmdir(tmp)
        raise
    return tmp


class StorageError(ValueError):
    """A path that cannot be read or written as asked; the message names it."""


def is_remote(p: PathLike) -> bool:
    """Whether p is an object-store URI (gs://, s3://)."""
    return os.fspath(p).startswith(_SCHEMES)


def path(p: PathLike) -> epath.Path:
    """p as an epath.Path: local paths absolute (as os.path.abspath), URIs unchanged."""
    s = os.fspath(p)
    if is_remote(s):
        return epath.Path(s)
    return epath.Path(os.path.abspath(s))


def abspath(p: PathLike) -> str:
    """The string form of `path(p)`: os.path.abspath for local paths, URIs unchanged."""
    return os.fspath(path(p))


def join(p: PathLike, *parts: str) -> str:
    """p / parts as a string; local paths stay as given (relative stays relative)."""
    s = os.fspath(p)
    if is_remote(s):
        return os.fspath(epath.Path(s).joinpath(*parts))
    return os.path.join(s, *parts)


def dirname(p: PathLike) -> str:
    """The parent of p, as os.path.dirname (a URI's parent keeps its scheme)."""
    s = os.fspath(p)
    if is_remote(s):
        return s.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(s)


def _not_found(p: PathLike, e: Exception) -> FileNotFoundError:
    what = "bucket or object" if is_remote(p) else "file"
    return FileNotFoundError(f"{os.fspath(p)}: no such {what}")


def _first_line(e: Exception) -> str:
    """`Type: first line of the message` (at most 200 characters of it), for one-line errors."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


@contextlib.contextmanager
def _reaching(p: PathLike) -> Iterator[None]:
    """Turns what an object store's client raises when it cannot be reached or refuses the
    credentials (network, DNS, auth, HTTP errors; many types) into one StorageError line
    naming p. FileNotFoundError and the errors of local paths pass unchanged."""
    try:
        yield
    except (FileNotFoundError, StorageError):
        raise
    except Exception as e:
        if not is_remote(p):
            raise
        raise StorageError(
            f"{os.fspath(p)}: cannot reach the object store ({_first_line(e)}); "
            "check the network and the credentials (gcloud auth application-default login)"
        ) from e


def exists(p: PathLike) -> bool:
    with _reaching(p):
        return path(p).exists()


def isdir(p: PathLike) -> bool:
    with _reaching(p):
        return path(p).is_dir()


def isfile(p: PathLike) -> bool:
    with _reaching(p):
        q = path(p)
        return q.exists() and not q.is_dir()


def listdir(p: PathLike) -> list[str]:
    """Names (not paths) of the entries of directory p, sorted."""
    with _reaching(p):
        return sorted(c.name for c in path(p).iterdir())


def glob(pattern: PathLike) -> list[str]:
    """Paths matching a glob pattern, sorted; local patterns as glob.glob."""
    s = os.fspath(pattern)
    if not is_remote(s):
        import glob as glob_lib

        return sorted(glob_lib.glob(s))
    root, _, rest = s.partition("://")
    bucket, _, key = rest.partition("/")
    base = epath.Path(f"{root}://{bucket}")
    with _reaching(s):
        return sorted(os.fspath(m) for m in base.glob(key))


def makedirs(p: PathLike) -> None:
    """Creates directory p and its parents (a no-op on an object store: prefixes need none)."""
    if not is_remote(p):
        os.makedirs(os.fspath(p), exist_ok=True)


def remove(p: PathLike) -> None:
    """Removes file p if it exists."""
    q = path(p)
    if q.exists():
        q.unlink()


def rmtree(p: PathLike) -> None:
    """Removes directory p and everything under it, if it exists."""
    if is_remote(p):
        q = path(p)
        if q.exists():
            q.rmtree()
    else:
        shutil.rmtree(os.fspath(p), ignore_errors=True)


def open_file(p: PathLike, mode: str = "r", **kwargs: Any) -> IO:
    """Opens p for reading (text or bytes); a missing file/bucket/object is one line."""
    if not is_remote(p):
        return open(os.fspath(p), mode, **kwargs)
    try:
        with _reaching(p):
            return path(p).open(mode, **kwargs)
    except FileNotFoundError as e:
        raise _not_found(p, e) from e


def read_bytes(p: PathLike) -> bytes:
    with open_file(p, "rb") as f:
        return f.read()


def read_text(p: PathLike, encoding: str = "utf-8") -> str:
    with open_file(p, "r", encoding=encoding) as f:
        return f.read()


def read_json(p: PathLike) -> Any:
    return json.loads(read_text(p))


@contextlib.contextmanager
def atomic_open(p: PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """A file opened for writing whose content appears at p only when the block completes.

    Local: a temporary file in p's directory, `os.replace`d onto p. Object store: a
    temporary object beside p, copied onto p server-side, then deleted. On an exception
    nothing is left at p (an existing p keeps its old content) and the temporary is removed.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open writes; mode {mode!r} has no 'w'")
    s = os.fspath(p)
    if not is_remote(s):
        directory, name = os.path.split(os.path.abspath(s))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=directory)
        try:
            with os.fdopen(fd, mode, **kwargs) as f:
                yield f
            os.chmod(tmp, file_mode())  # mkstemp's 0600 -> what open() would give
            os.replace(tmp, s)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        return
    kwargs.pop("newline", None)  # objects are written as given
    target = path(s)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with tmp.open(mode, **kwargs) as f:
            yield f
        tmp.copy(target, overwrite=True)
    except FileNotFoundError as e:
        raise _not_found(s, e) from e
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def write_bytes(p: PathLike, data: bytes) -> None:
    with atomic_open(p, "wb") as f:
        f.write(data)


def write_text(p: PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(p, "w", encoding=encoding) as f:
        f.write(text)


def write_json(
    p: PathLike,
    value: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = True,
    ensure_ascii: bool = True,
) -> None:
    """value as JSON (keys sorted unless `sort_keys=False`; non-ASCII characters escaped
    unless `ensure_ascii=False`) with a final newline, written atomically."""
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    write_text(p, text + "\n")


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Copies one file (between any two of local / object store). A local file is uploaded
    with one put (an object appears only once its upload completes)."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copyfile(os.fspath(src), os.fspath(dst))
    elif not is_remote(src):
        fs, root = fsspec.core.url_to_fs(os.fspath(dst))
        fs.put_file(os.fspath(src), root)
    else:
        write_bytes(dst, read_bytes(src))


def holds_files(p: PathLike) -> bool:
    """Whether p exists and is a file or a non-empty directory."""
    with _reaching(p):
        q = path(p)
        if not q.exists():
            return False
        if not q.is_dir():
            return True
        return any(True for _ in q.iterdir())


def publish_dir(
    out_dir: PathLike,
    write: Callable[[str], None],
    *,
    overwrite: bool,
    marker: str | None = None,
    exists_error: Callable[[str], Exception] | None = None,
) -> str:
    """Calls write(tmp_dir) with a local tmp_dir, then publishes it as out_dir; returns
    out_dir's full path (`abspath`).

    A non-empty out_dir is refused (`exists_error(out_dir)`, FileExistsError by default)
    unless overwrite; with overwrite the old directory is removed only after the new one is
    complete. Local: tmp_dir is a sibling of out_dir, renamed onto it. Object store: tmp_dir
    is a local temporary directory (so writers that need a local file, such as safetensors,
    TF's Saver and Orbax's local commit, work unchanged) whose files are uploaded under
    out_dir with `marker` (the file that makes the directory valid to its readers) last;
    with overwrite the old marker is removed before anything else, so a reader never takes a
    mix of old and new objects for a finished directory.
    """
    out = abspath(out_dir)
    if holds_files(out) and not overwrite:
        make = exists_error or (
            lambda o: FileExistsError(f"{o}: output directory is not empty; pass --overwrite")
        )
        raise make(out)
    if not is_remote(out):
        parent, name = os.path.split(out)
        tmp = temp_dir_beside(out, prefix=name + ".tmp-")
        try:
            write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=name + ".old-", dir=parent)
            os.rmdir(old)
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return out
    with tempfile.TemporaryDirectory(prefix="bertjax-publish-") as tmp:
        write(tmp)
        files = sorted(
            os.path.relpath(os.path.join(d, f), tmp) for d, _, names in os.walk(tmp) for f in names
        )
        if exists(out):
            if marker:
                remove(join(out, marker))
            rmtree(out)
        ordered = [f for f in files if f != marker] + [f for f in files if f == marker]
        fs, root = fsspec.core.url_to_fs(out)
        for rel in ordered:
            fs.put_file(os.path.join(tmp, rel), f"{root}/{rel}")
    return out


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[str]:
    """p itself when local; for a URI, a temporary local copy of the object or of every
    object under the prefix (for readers that only open local files: safetensors, TF's
    checkpoint reader), removed afterwards."""
    s = os.fspath(p)
    if not is_remote(s):
        yield s
        return
    fs, root = fsspec.core.url_to_fs(s)
    if not fs.exists(root):
        raise FileNotFoundError(f"{s}: no such bucket or object")
    with tempfile.TemporaryDirectory(prefix="bertjax-download-") as tmp:
        local = os.path.join(tmp, os.path.basename(root.rstrip("/")) or "root")
        if fs.isdir(root):
            fs.get(root.rstrip("/") + "/", local, recursive=True)
        else:
            fs.get_file(root, local)
        yield local


def require_local(p: PathLike, what: str) -> str:
    """p unchanged when it is local; StorageError when it is a URI and `what` cannot use one
    (ArrayRecord shards: grain reads them with random access from local files)."""
    s = os.fspath(p)
    if is_remote(s):
        raise StorageError(f"{s}: {what} needs a local path, not a bucket URI; {FUSE_RECIPE}")
    return s


class MissingExtraError(ValueError):
    """A feature whose optional dependency is not installed; the message names the extra."""


# The modules of the optional extras: the name a user knows them by, and the extra.
_EXTRA_MODULES = {
    "tensorflow": ("TensorFlow", "tf"),
    "tensorflow_datasets": ("TensorFlow Datasets", "tf"),
}


def require_extra(module: str, what: str) -> Any:
    """The imported `module`, which `what` needs; MissingExtraError when it is not installed,
    one line naming the extra: "reading TFDS sources needs TensorFlow Datasets: pip install
    'bertjax[tf]'". TFDS reads through TensorFlow, so tensorflow_datasets needs both."""
    try:
        loaded = importlib.import_module(module)
        if module == "tensorflow_datasets":
            importlib.import_module("tensorflow")
    except ModuleNotFoundError as e:
        missing = (e.name or module).split(".")[0]  # the extra's module that is not there
        label, extra = _EXTRA_MODULES.get(missing, _EXTRA_MODULES[module])
        raise MissingExtraError(f"{what} needs {label}: pip install 'bertjax[{extra}]'") from e
    return loaded


def check_writable(directory: PathLike) -> None:
    """Writes and deletes a probe file in directory; StorageError naming it if that fails
    (a missing bucket, no write permission), so a run stops before compiling."""
    d = abspath(directory)
    probe = join(d, f".bertjax-write-probe-{uuid.uuid4().hex[:12]}")
    try:
        makedirs(d)
        path(probe).write_text("ok")
        remove(probe)
    except Exception as e:  # permission, missing bucket, read-only filesystem: many types
        raise StorageError(
            f"{d}: cannot write there ({_first_line(e)}); the workdir must be writable"
        ) from e


class WorkdirInUseError(StorageError):
    """Another run holds the directory's lock; the message names the lock and the flag."""


LOCK_FILE = ".lock"


@contextlib.contextmanager
def workdir_lock(
    directory: PathLike,
    *,
    lock_file: PathLike | None = None,
    flag: str = "--workdir",
    primary: bool = True,
) -> Iterator[None]:
    """Holds `directory`'s lock (`DIRECTORY/.lock`, or `lock_file`) for the block, so two runs
    never write one directory at once; WorkdirInUseError (one line naming `flag`) at once when
    another process holds it. The lock is an OS file lock (flock), released when the block
    ends or the process dies, so a killed run leaves nothing to clean up.

    Taken by the process that writes the directory's files only (`primary`: process 0 of a
    multi-host run; the other processes skip it). A bucket URI is not locked: an object store
    has no locks, so one run at a time in a `gs://` workdir is the user's to keep. A directory
    this call created that holds nothing but the lock when the block ends is removed again (a
    run that stopped before writing anything leaves nothing)."""
    d = abspath(directory)
    if not primary or is_remote(d):
        yield
        return
    created = not os.path.exists(d)
    target = abspath(lock_file) if lock_file is not None else os.path.join(d, LOCK_FILE)
    check_writable(os.path.dirname(target))
    lock = filelock.FileLock(target, timeout=0, mode=file_mode())
    try:
        lock.acquire()
    except filelock.Timeout:
        raise WorkdirInUseError(
            f"{d} is in use by another run (lock {target} held); wait for it or use another {flag}"
        ) from None
    try:
        yield
    finally:
        if created and lock_file is None and os.listdir(d) == [LOCK_FILE]:
            with contextlib.suppress(OSError):
                os.remove(target)
                os.rmdir(d)
        lock.release()


# The names temp_dir_beside, publish_dir and atomic_open give their temporary siblings
# (`.NAME.tmp-XXXXXXXX`, `NAME.tmp-XXXXXXXX`, `NAME.old-XXXXXXXX`: mkdtemp's or a uuid's
# random suffix).
_TEMP_NAME = re.compile(r"^.+\.(tmp|old)-[A-Za-z0-9_]{8,12}$")


def remove_stale_temps(directory: PathLike) -> list[str]:
    """Removes the temporary outputs an interrupted writer (SIGKILL, a power cut) left in a
    local `directory`; returns their paths. Only for a directory whose writer holds its
    `workdir_lock`: a running writer's temporary output would be removed too."""
    d = abspath(directory)
    if is_remote(d) or not os.path.isdir(d):
        return []
    stale = sorted(os.path.join(d, n) for n in os.listdir(d) if _TEMP_NAME.match(n))
    for p in stale:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(p)
    return stale
