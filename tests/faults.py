"""A local filesystem that runs out of space after a byte budget (a full disk, injected).

`FullDisk(budget)` is a pyarrow `FileSystemHandler`: every call goes to the local filesystem,
and writes fail with ENOSPC ("No space left on device") once `budget` bytes have been written
in total, as a real full disk does part-way through a file.
"""

import errno
import os

import pyarrow as pa
import pyarrow.fs as pafs


class _Sink:
    def __init__(self, path, disk):
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.disk = disk
        self.closed = False

    def write(self, data):
        data = bytes(data)
        room = self.disk.budget - self.disk.written
        if len(data) > room:
            self.file.write(data[:max(room, 0)])
            self.disk.written = self.disk.budget
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.disk.written += len(data)
        return self.file.write(data)

    def flush(self):
        self.file.flush()

    def close(self):
        self.closed = True
        self.file.close()

    def writable(self):
        return True

    def seekable(self):
        return False

    def readable(self):
        return False


class FullDisk(pafs.FileSystemHandler):
    def __init__(self, budget):
        self.budget, self.written = budget, 0
        self.local = pafs.LocalFileSystem()

    def get_type_name(self):
        return "fulldisk"

    def equals(self, other):
        return self is other

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("not here")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_Sink(path, self), mode="w")

    def open_append_stream(self, path, metadata):
        raise OSError("append is not supported")

    def normalize_path(self, path):
        return path


def full_disk(budget):
    """(pyarrow filesystem, handler): the handler's `budget` can be raised to 'free space'."""
    handler = FullDisk(budget)
    return pafs.PyFileSystem(handler), handler
