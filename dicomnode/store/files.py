"""The storage folder: its layout, the durable write, clean-up and quarantine.

Layout under ``storage.path``::

    instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    tmp/                      partial writes; emptied at start-up (never acknowledged)
    results/<job id>/...      objects produced by pipelines (see :func:`results_dir`)
    quarantine/               unreadable leftovers moved aside at start-up

Every path under ``instances/`` is built from UIDs that
:func:`dicomnode.store.header.require_uid` accepted, so none can leave the
folder.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, cast

from dicomnode.store.errors import OutOfResources
from dicomnode.store.header import InstanceHeader, require_uid

# Bytes of a data set still arriving after which their write-out to disk is
# started (see StorageFiles.start_writeback).
WRITEBACK_BYTES = 256 * 1024

INSTANCES = "instances"
TMP = "tmp"
RESULTS = "results"
QUARANTINE = "quarantine"


def relative_path(header: InstanceHeader) -> Path:
    """Where an instance lives, relative to the storage root (UIDs already validated)."""
    return (
        Path(INSTANCES)
        / header.study_instance_uid
        / header.series_instance_uid
        / f"{header.sop_instance_uid}.dcm"
    )


def results_dir(root: Path, job_id: int) -> Path:
    """The folder of the objects a job's pipeline produced, under storage root *root*."""
    return Path(root) / RESULTS / str(int(job_id))


class Written(NamedTuple):
    """What :meth:`StorageFiles.write_file` did."""

    size: int
    replaced: bool  # the name held a file before (a resend), now overwritten


class StorageFiles:
    """The files under ``storage.path``.

    Parameters
    ----------
    root
        ``storage.path``.
    fsync
        fsync files and folders before acknowledging (only disk benchmarks turn it off).
    fsync_directory
        Also fsync the folder after each rename (see :meth:`adopt`).
    min_free_bytes
        :meth:`check_space` refuses when the file system has less free space than this.
    """

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        fsync_directory: bool = False,
        min_free_bytes: int = 0,
    ) -> None:
        self.root = Path(root)
        self.instances_dir = self.root / INSTANCES
        self.tmp_dir = self.root / TMP
        self.quarantine_dir = self.root / QUARANTINE
        self.fsync = fsync
        self.fsync_directory = fsync_directory
        self.min_free_bytes = min_free_bytes
        # Folders known to exist (and be durable): most writes skip the mkdir walk.
        self._known_dirs: set[Path] = set()
        for folder in (self.instances_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # -- space ----------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Free bytes available to us on the storage file system."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_space(self, incoming: int) -> None:
        """Raise :class:`OutOfResources` when storing *incoming* bytes would cross the floor."""
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            raise OutOfResources(
                f"storage has {free // 1_048_576} MiB free, below the floor of "
                f"{self.min_free_bytes // 1_048_576} MiB (storage.min_free_bytes)"
            )

    # -- the durable write ------------------------------------------------------------

    def open_incoming(self) -> tuple[int, Path]:
        """A new file under ``tmp/`` for a data set that is still arriving: (fd, path).

        Opened for reading too: the header is scanned from it once complete.

        Raises
        ------
        OutOfResources
            When the file cannot be created.
        """
        path = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640), path
        except OSError as exc:
            raise OutOfResources(f"cannot create a file in tmp/: {exc.strerror or exc}") from exc

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        """Start writing *length* bytes at *offset* of *fd* to disk, without waiting.

        A peer sends the next instance only after our answer, and we answer
        only after fsync; the fsync of a whole 0.5 MB slice at the end would
        first write every page of it, then commit the journal. Started while
        the rest of the data set is still arriving, the write-out overlaps
        the network and the final fsync is left mostly the journal commit.
        Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``: it neither waits for
        the pages nor makes anything durable (the fsync still does), so it
        changes speed, never the durability order; a no-op elsewhere, or
        with ``storage.fsync`` off.
        """
        if self.fsync and _sync_file_range is not None:
            _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def adopt(self, fd: int, tmp: Path, relative: Path) -> Written:
        """Rename the complete file *tmp* (open as *fd*) to ``root/relative``, durably.

        A new name is renamed into place, then fsynced once: on ext4, XFS and
        btrfs the journal commit that fsync forces holds every earlier metadata
        change of the file, its new name included, so the folder needs no fsync
        of its own. When the name already holds a copy (a resend), the new copy
        is fsynced *before* it replaces the old one and the folder after, so a
        crash never leaves a partial file where a good one was.
        ``storage.fsync_directory = true`` uses that strict order for every
        file, for file systems that do not journal a rename with the data. The
        caller closes *fd*.

        Raises
        ------
        OutOfResources
            When the disk refuses; *tmp* is removed.
        """
        target = self.root / relative
        replaced = target.exists()
        strict = self.fsync_directory or replaced
        try:
            self._ensure_dir(target.parent)
            size = os.fstat(fd).st_size
            if self.fsync and strict:
                os.fsync(fd)
            os.replace(tmp, target)
            if self.fsync:
                if strict:
                    _fsync_dir(target.parent)
                else:
                    os.fsync(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutOfResources(
                f"disk write failed: {exc.strerror or exc} ({relative.name})"
            ) from exc
        return Written(size, replaced)

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        missing = []
        probe = folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        folder.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            # A new folder is durable only once its parent's entry is.
            for created in missing:
                _fsync_dir(created.parent)
        self._known_dirs.add(folder)

    def remove_file(self, relative: Path) -> None:
        """Delete one file placed by :meth:`adopt` that was never acknowledged."""
        (self.root / relative).unlink(missing_ok=True)

    # -- recovery and clean-up ----------------------------------------------------------

    def clear_tmp(self) -> int:
        """Remove partial writes left by a crash (they were never acknowledged)."""
        removed = 0
        for leftover in self.tmp_dir.glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def iter_files(self) -> Iterator[Path]:
        """Every stored instance file."""
        yield from self.instances_dir.glob("*/*/*.dcm")

    def quarantine(self, path: Path) -> Path:
        """Move *path* into ``quarantine/``, never over a file already there; return its new path.

        The first file of a name keeps it (``quarantine/<SOPInstanceUID>.dcm``);
        later ones of the same name get ``<stem>-2.dcm``, ``<stem>-3.dcm``, ...
        """
        self.quarantine_dir.mkdir(exist_ok=True)
        number = 1
        while True:
            name = path.name if number == 1 else f"{path.stem}-{number}{path.suffix}"
            target = self.quarantine_dir / name
            if _move_no_clobber(path, target):
                return target
            number += 1

    def remove_study_files(self, study_instance_uid: str) -> int:
        """Delete a study's instance folder; return the bytes freed.

        The caller holds off the C-STOREs of this process while it runs (see
        :meth:`dicomnode.store.InstanceStore.exclusive`).
        """
        folder = self.instances_dir / require_uid(study_instance_uid, "StudyInstanceUID")
        freed = sum(p.stat().st_size for p in folder.glob("*/*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        self._known_dirs = {d for d in self._known_dirs if folder not in d.parents and d != folder}
        return freed


def _move_no_clobber(source: Path, target: Path) -> bool:
    """Move *source* to *target* unless *target* exists; return whether it moved."""
    try:
        # link() refuses an existing name atomically, where rename() would replace it.
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: check, then rename
        if target.exists():
            return False
        source.rename(target)
        return True
    source.unlink()
    return True


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux), or None; Python's os module does not offer it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = _libc_sync_file_range()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
