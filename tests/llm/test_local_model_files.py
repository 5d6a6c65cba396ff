"""The model file and the settings that name it: parts joined only when the joined file has the
pinned sha256 (a mismatch keeps nothing and says why), `LOCAL_MODEL` resolved to a GGUF or
refused clearly, `DEFAULT_MODEL` the local model when no key is set, the server's port checked
before anything starts, and the fetched model still the pinned one."""

from __future__ import annotations

import hashlib
import socket
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from amelia_common import local_model
from amelia_common.embedded import EmbeddedStartError, free_port
from amelia_common.llama_server import EmbeddedLlama, embedded_wanted
from amelia_common.local_model import (
    CODER_1_5B,
    PACKAGED,
    PARTS,
    LocalModelError,
    ModelVerificationError,
    Part,
    join,
)
from amelia_common.settings import DEFAULT_ANTHROPIC_MODEL, PACKAGED_LOCAL_MODELS, Settings


def settings(**values: object) -> Settings:
    base: dict[str, object] = {"ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": "", "DEFAULT_MODEL": ""}
    return Settings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]


def fake_wheels(
    folder: Path, tamper: int | None = None, parts: tuple[Part, ...] = PARTS
) -> tuple[list[Path], str]:
    """Wheels shaped like a model's (one slice each, at the pinned member path) and the
    sha256 of their slices joined in order; `tamper` flips a byte in that part's slice."""
    wheels, digest = [], hashlib.sha256()
    for i, part in enumerate(parts):
        data = bytes([i]) * 1000 + f"part {i}".encode()
        digest.update(data)
        if i == tamper:
            data = b"X" + data[1:]
        wheel = folder / f"{part.wheel_prefix}py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(part.member, data)
        wheels.append(wheel)
    return wheels, digest.hexdigest()


def test_parts_are_joined_in_order_into_the_target(tmp_path: Path) -> None:
    wheels, sha = fake_wheels(tmp_path)
    target = join(wheels, tmp_path / "models" / "model.gguf", expected=sha)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert [p.name for p in target.parent.iterdir()] == ["model.gguf"]


def test_a_tampered_part_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    wheels, sha = fake_wheels(tmp_path, tamper=3)
    target = tmp_path / "models" / "model.gguf"
    with pytest.raises(ModelVerificationError) as error:
        join(wheels, target, expected=sha)
    assert f"expected {sha}" in str(error.value) and "nothing was kept" in str(error.value)
    assert list(target.parent.iterdir()) == []


def test_verify_names_the_file_and_both_hashes(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF not the model")
    with pytest.raises(ModelVerificationError) as error:
        local_model.verify(path)
    message = str(error.value)
    assert str(path) in message and local_model.MODEL_SHA256 in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message


@pytest.mark.parametrize(
    ("model", "count"), [(PACKAGED["qwen2.5-coder-0.5b"], 6), (CODER_1_5B, 22)]
)
def test_every_part_is_pinned_by_version_and_wheel_hash(
    model: local_model.PackagedModel, count: int
) -> None:
    for part in model.parts:
        assert part.requirement.startswith(f"{part.package}=={part.version} --hash=sha256:")
        assert len(part.wheel_sha256) == 64
    names = [p.member.rsplit("/", 1)[1] for p in model.parts]
    assert names == [f"part{i:02d}.bin" for i in range(1, count + 1)]
    assert len(model.sha256) == 64 and model.file.endswith(".gguf")


def test_the_settings_accept_exactly_the_packaged_models(tmp_path: Path) -> None:
    assert tuple(PACKAGED) == PACKAGED_LOCAL_MODELS
    named = settings(LOCAL_MODEL=CODER_1_5B.name, LOCAL_MODEL_DIR=tmp_path)
    assert named.DEFAULT_MODEL.removeprefix("local:") == CODER_1_5B.name
    # Not fetched yet: resolving it says which model and how to fetch it.
    with pytest.raises(LocalModelError, match=f"{CODER_1_5B.name} is not at .*fetch"):
        local_model.resolve(named)
    wheels, sha = fake_wheels(tmp_path, parts=CODER_1_5B.parts)
    target = local_model.model_path(named, CODER_1_5B)
    join(wheels, target, sha, CODER_1_5B.parts)
    assert target.name == CODER_1_5B.file and target.read_bytes().startswith(bytes([0]) * 1000)


def test_the_fetched_model_is_the_pinned_one() -> None:
    """What `make install` left in the cache still has the pinned sha256."""
    path = local_model.model_path(settings())
    assert path.is_file(), f"run 'make install' to fetch {path}"
    local_model.verify(path)


def test_default_model_is_local_without_a_key_and_the_provider_with_one(
    tmp_path: Path,
) -> None:
    assert settings().DEFAULT_MODEL == "local:qwen2.5-coder-0.5b"
    assert settings(ANTHROPIC_API_KEY="sk-ant-x").DEFAULT_MODEL == DEFAULT_ANTHROPIC_MODEL
    assert settings(OPENAI_API_KEY="sk-x").DEFAULT_MODEL.startswith("openai:")
    assert settings(LOCAL_MODEL="off").DEFAULT_MODEL == DEFAULT_ANTHROPIC_MODEL
    assert settings(DEFAULT_MODEL="offline:echo").DEFAULT_MODEL == "offline:echo"
    gguf = tmp_path / "m.gguf"
    resolved = settings(LOCAL_MODEL=str(gguf)).DEFAULT_MODEL
    assert resolved == f"local:{gguf}"


def test_bad_local_model_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="LOCAL_MODEL must be"):
        settings(LOCAL_MODEL="llama3")
    assert local_model.resolve(settings(LOCAL_MODEL="off")) is None
    with pytest.raises(LocalModelError, match="no such file"):
        local_model.resolve(settings(LOCAL_MODEL=str(tmp_path / "missing.gguf")))
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(LocalModelError, match="not a GGUF file"):
        local_model.resolve(settings(LOCAL_MODEL=str(not_gguf)))
    with pytest.raises(LocalModelError, match="make install"):
        local_model.resolve(settings(LOCAL_MODEL_DIR=tmp_path / "empty"))


def test_a_busy_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = EmbeddedLlama(tmp_path, port, tmp_path / "m.gguf", "m")
        with pytest.raises(EmbeddedStartError, match=f"port {port} is in use.*LOCAL_MODEL_PORT"):
            server.start()
    assert server.pid() is None


def test_the_server_is_wanted_only_when_the_default_model_is_local() -> None:
    assert embedded_wanted(settings())
    assert not embedded_wanted(settings(ANTHROPIC_API_KEY="sk-ant-x"))
    assert not embedded_wanted(settings(LOCAL_MODEL="off"))
    assert not embedded_wanted(settings(LOCAL_MODEL_URL="http://127.0.0.1:9/v1"))
    assert embedded_wanted(settings(ANTHROPIC_API_KEY="sk-ant-x", DEFAULT_MODEL="local:x.gguf"))


def test_a_file_llama_cpp_cannot_load_fails_the_start_with_its_reasons(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00 not a model")
    server = EmbeddedLlama(tmp_path / "data", free_port(), broken, "broken")
    with pytest.raises(EmbeddedStartError) as error:
        server.start()
    message = str(error.value)
    assert "exited with code 1" in message and str(server.log_file) in message
    assert f"failed to load model from {broken}" in message
    assert server.pid() is None
