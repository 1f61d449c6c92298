"""Every file operation the store makes that changes the disk, behind one small object.

The store never calls ``os`` directly for anything that writes: it goes through a ``FileIO``.
The real one below is the operating system itself (``write`` *is* ``os.write``, so the hot path
pays no extra Python call). The power-loss harness (tests/powerloss.py) substitutes a subclass
that records each operation — creates, appends, truncates, renames, unlinks, and fsyncs of files
and directories — while still performing it, and later rebuilds the data directory as a power
cut at any point would have left it. Reads are not part of the seam: they change nothing.

What a power cut keeps (the rules the store is written against, and that the harness applies):
a file's bytes are durable up to its last completed fsync; a name created, renamed or removed
in a directory is durable only once that directory has been fsynced; a new directory needs its
parent fsynced. ``write_file`` and ``fsync_dir`` are the two helpers that follow those rules.
"""
import os


class FileIO:
    """The real thing. Methods that change the disk are the os functions themselves."""

    open = staticmethod(os.open)
    write = staticmethod(os.write)
    fsync = staticmethod(os.fsync)
    close = staticmethod(os.close)
    dup = staticmethod(os.dup)
    ftruncate = staticmethod(os.ftruncate)
    mkdir = staticmethod(os.mkdir)
    unlink = staticmethod(os.unlink)
    rmdir = staticmethod(os.rmdir)
    replace = staticmethod(os.replace)

    def write_all(self, fd: int, data) -> None:
        """os.write until every byte is handed over (a short write is not an error)."""
        view = memoryview(data)
        write = self.write
        while view:
            view = view[write(fd, view):]

    def fsync_dir(self, path: str) -> None:
        """Make the names in a directory durable (new, renamed and removed entries)."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd)
        finally:
            self.close(fd)

    def makedirs(self, path: str) -> str | None:
        """Create path and any missing parents. Returns the directory whose entries changed
        (the parent of the topmost directory created, to fsync), or None if path existed."""
        if os.path.isdir(path):
            return None
        parent = os.path.dirname(path.rstrip(os.sep)) or "."
        top = self.makedirs(parent)
        try:
            self.mkdir(path, 0o755)
        except FileExistsError:
            return top
        return top or parent

    def rmtree(self, path: str) -> None:
        """Remove a directory and what it holds, one recorded unlink at a time."""
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            return
        for name in names:
            full = os.path.join(path, name)
            if os.path.isdir(full) and not os.path.islink(full):
                self.rmtree(full)
            else:
                try:
                    self.unlink(full)
                except FileNotFoundError:
                    pass
        try:
            self.rmdir(path)
        except FileNotFoundError:
            pass

    def write_file(self, path: str, data: bytes, sync: bool = True) -> None:
        """Replace a whole file atomically: a temporary file, fsync, rename, fsync the
        directory. After a crash the file holds the old content or the new, never a mix."""
        tmp = path + ".tmp"
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.write_all(fd, data)
            if sync:
                self.fsync(fd)
        finally:
            self.close(fd)
        self.replace(tmp, path)
        if sync:
            self.fsync_dir(os.path.dirname(path) or ".")

    @staticmethod
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()


REAL = FileIO()
