"""Paths that are either local or object-storage URIs (``s3://``, ``gs://``), read and written through pyarrow's
filesystems, so the Ray engine's archive, pending messages and scores can live where every node of a cluster sees
them. Credentials and endpoints come from the usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS``...), as for any pyarrow program."""

from __future__ import annotations

import posixpath
import uuid
from fnmatch import fnmatchcase
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from screener.errors import InputError, StorageError

# '?' is not a glob character in a URI: it starts the query string.
_URI_GLOB = "*["
_PATH_GLOB = "*?["


def is_uri(path: str) -> bool:
    return "://" in path


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem for ``path`` and the path as that filesystem names it (absolute for local paths, so that
    workers started in another directory find the same files)."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise StorageError(f"cannot open {path!r}: {exc}. Expected a local path or an s3:// or gs:// URI "
                           "with credentials in the environment") from exc


def join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts) if is_uri(base) else str(Path(base, *parts))


def expand(pattern: str) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files a path, a folder or a glob names, sorted. A glob matches one path component per
    pattern component (``archive/*/part-*.parquet``), as DuckDB's globs do."""
    glob_chars = _URI_GLOB if is_uri(pattern) else _PATH_GLOB
    parts = pattern.split("/")
    first_glob = next((i for i, p in enumerate(parts) if any(c in p for c in glob_chars)), None)
    base = "/".join(parts[:first_glob]) if first_glob is not None else pattern
    fs, base_path = resolve(base)
    info = fs.get_file_info(base_path)
    if first_glob is None and info.type == pafs.FileType.File:
        return fs, [base_path]
    if info.type != pafs.FileType.Directory:
        raise InputError(f"no Parquet files match {pattern!r}: {base!r} does not exist")
    listed = fs.get_file_info(pafs.FileSelector(base_path, recursive=True))
    if first_glob is None:
        files = [f.path for f in listed if f.type == pafs.FileType.File and f.path.endswith(".parquet")]
    else:
        wanted = parts[first_glob:]
        depth = len(base_path.rstrip("/").split("/"))
        files = [f.path for f in listed if f.type == pafs.FileType.File
                 and _matches(f.path.split("/")[depth:], wanted)]
    if not files:
        raise InputError(f"no Parquet files match {pattern!r}: expected a file, a folder of .parquet files or a "
                         "glob such as 's3://bucket/archive/*.parquet'")
    return fs, sorted(files)


def _matches(components: list[str], patterns: list[str]) -> bool:
    return len(components) == len(patterns) and all(fnmatchcase(c, p) for c, p in zip(components, patterns))


def write_parquet(table: pa.Table, fs: pafs.FileSystem, path: str) -> None:
    """Write a whole file or nothing under ``path``: object stores publish an upload only when it completes, and
    a local file is written beside its final name and renamed, so a worker killed mid-write leaves no torn file."""
    if isinstance(fs, pafs.LocalFileSystem):
        folder, name = posixpath.split(path)
        partial = posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.partial")
        fs.create_dir(folder, recursive=True)
        pq.write_table(table, partial, filesystem=fs)
        fs.move(partial, path)
    else:
        pq.write_table(table, path, filesystem=fs)


def read_parquet(fs: pafs.FileSystem, path: str) -> pa.Table:
    return pq.read_table(path, filesystem=fs)


def dataset(fs: pafs.FileSystem, files: list[str]):
    """One pyarrow dataset over ``files`` whose schema is the union of theirs, like DuckDB's union_by_name."""
    import pyarrow.dataset as pads

    schema = pa.unify_schemas([pq.read_schema(f, filesystem=fs) for f in files], promote_options="permissive")
    return pads.dataset(files, schema=schema, filesystem=fs, format="parquet")
