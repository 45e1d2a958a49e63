"""Output folders and atomic output files: a reader never sees a half-written file under its
final name, and two runs never write into one folder at once.

Every writer goes through :func:`atomic_path`: the content is written to a temporary file in
the destination's own directory (so the final ``os.replace`` is a rename on one file system),
flushed to disk, and only then renamed over the destination. An interrupted run leaves the
previous file (or none) in place, and at worst a ``.tmp`` file: removed on error, and by the
next run into the folder (:func:`remove_temporaries`) if the process was killed.

A run holds :func:`locked` on its folder for its whole length (an advisory ``fcntl`` lock on
``.lock``, which names the holder's pid), and marks the folder :func:`complete` only once
every output is written: the marker, not the presence of files, says that a folder holds a
finished map.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from src.errors import InputError


@contextlib.contextmanager
def atomic_path(path: Path, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced (unless not ``sync``: a
    cache entry, which a crash may lose but never leaves half-written) and renamed to
    ``path``."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON; non-finite floats become ``null`` (JSON has no inf or nan)."""
    text = json.dumps(finite(obj), indent=2, allow_nan=False, default=_json_default)
    write_text(path, text + "\n")


def finite(obj: object) -> object:
    """``obj`` with every non-finite float replaced by None (JSON has no inf or nan)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


CHUNK_ELEMENTS = 1 << 18
"""Largest netCDF chunk (values) of a big variable: 1 MiB of float32."""
CHUNK_CACHE_BYTES = 1 << 22
"""HDF5's chunk cache per variable while writing (netCDF's default is 64 MiB, and it fills)."""


def write_netcdf(path: Path, ds: xr.Dataset) -> None:
    """Write ``ds`` as netCDF-4 (compressed), atomically.

    Variables of more than :data:`CHUNK_ELEMENTS` values are stored in chunks of at most that
    many (whole trailing dimensions first), and the chunk cache is kept small while writing:
    the memory the write takes on top of ``ds`` stays a few MiB, whatever its size. NaNs are
    written as one canonical NaN (:func:`canonical_nans`).
    """
    import netCDF4

    ds = canonical_nans(ds)
    encoding: dict[str, dict[str, object]] = {
        name: {"zlib": True, "complevel": 4}
        for name, var in ds.data_vars.items()
        if var.dtype.kind in "fiu"
    }
    for name, enc in encoding.items():
        if ds[name].size > CHUNK_ELEMENTS:
            enc["chunksizes"] = _chunks(ds[name].shape, CHUNK_ELEMENTS)
    cache = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(CHUNK_CACHE_BYTES)
    try:
        with atomic_path(path) as tmp:
            ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    finally:
        netCDF4.set_chunk_cache(*cache)


def canonical_nans(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every NaN of its float variables the canonical quiet NaN.

    A NaN's sign bit says nothing: which operand's NaN an instruction passes on (x86 passes
    its first operand's; an invalid operation makes a negative one) depends on the order
    XLA's code generator put the operands in, and two programs computing the same values
    (a map run whole, and the same map resumed) can differ there. Written as they come, two
    equal maps would then differ in their bytes.
    """
    out = ds.copy(deep=False)
    for name, var in ds.data_vars.items():
        if var.dtype.kind == "f":
            values = var.values
            nan = np.isnan(values)
            if nan.any():
                out[name] = var.copy(data=np.where(nan, values.dtype.type(np.nan), values))
    return out


def _chunks(shape: tuple[int, ...], most: int) -> tuple[int, ...]:
    """A chunk shape of at most ``most`` values: whole dimensions from the last one on, then
    as much of the next one as fits, then 1."""
    out = []
    for k in reversed(shape):
        out.append(max(1, min(k, most)))
        most //= out[-1]
    return tuple(reversed(out))


COMPLETE = ".complete"
"""The marker of a folder whose map and report were all written (:func:`complete`)."""
LOCK = ".lock"
"""The file a run locks (:func:`locked`) while it writes into a folder; it holds its pid."""
_TEMPORARY = ".*.tmp"  # what atomic_path names its temporary files


def prepare_output_dir(out: Path) -> Path:
    """Create ``out`` if needed and check that files can be written there (one-line
    :class:`~src.errors.InputError` otherwise: not a directory, name too long, no permission,
    read-only, no space)."""
    out = Path(out)
    try:
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise InputError(f"--out {out} is not writable: {describe(e)}") from None
    return out


def describe(error: OSError) -> str:
    """An OS error in a few words (``No space left on device``), whatever it carries."""
    return str(error.strerror or errno.errorcode.get(error.errno or 0) or error)


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the folder's lock for the ``with`` block; another holder (a run still writing into
    ``out``) is refused at once with an :class:`~src.errors.InputError` naming its pid. The
    lock goes with the process, however it ends."""
    path = Path(out) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(
                f"--out {out} is in use by another run (pid {holder}); wait for it to finish "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` left in ``folder`` when a process
    was killed mid-write (call it holding :func:`locked`: no live writer owns them)."""
    gone = []
    for tmp in Path(folder).glob(_TEMPORARY):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def is_complete(out: Path) -> bool:
    """Whether ``out`` holds a finished run's outputs (:func:`complete` was called)."""
    return (Path(out) / COMPLETE).exists()


def complete(out: Path) -> None:
    """Mark ``out`` as holding a finished map: the last file a run writes."""
    write_text(Path(out) / COMPLETE, "every output of this run was written\n")


def incomplete(out: Path) -> None:
    """Unmark ``out`` before a run starts overwriting it."""
    (Path(out) / COMPLETE).unlink(missing_ok=True)


def _json_default(obj: object) -> object:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
