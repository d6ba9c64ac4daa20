"""How the store keeps files: read-only modes, a file's id in cas/ (its content digest, ``.x`` when executable), clones, removing trees, free space."""
from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

READ_ONLY_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
READ_EXECUTE = READ_ONLY_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH  # folders, and executable files
# A file's id in cas/ is its content digest, plus this suffix when it is executable (a
# script like compile.sh): the mode is part of what is stored, so it survives the store.
EXEC_SUFFIX = ".x"


def content_digest(file_id: str) -> str:
    return file_id.removesuffix(EXEC_SUFFIX)


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds, or will hold, ``path`` (its nearest existing ancestor)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) directory tree."""
    if not path.exists():
        return
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, stat.S_IRWXU)
    shutil.rmtree(path)


FICLONE = 0x40049409  # Linux ioctl: dst shares src's extents (copy-on-write), a separate inode


def clone_file(src: Path, dst: Path) -> str:
    """``dst`` as a file of its own with ``src``'s bytes: a reflink where the filesystem has them
    (XFS, Btrfs: no bytes copied), else a copy. Which it was: "reflink" or "copy"."""
    import fcntl

    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return "reflink"
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM):
                raise
        shutil.copyfileobj(fin, fout, 1 << 20)
    return "copy"


def disk_bytes(root: Path) -> int:
    """Bytes of a folder's files, a file with several links counted once (what they hold on disk,
    reflinks aside: their shared extents are counted for each)."""
    seen, total = set(), 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total
