"""The check of exported files as the Hub client reads them (``_HashingReader`` / ``_CheckedAdd``):
every byte hashed once, in file order, compared with ``hashlib`` over the whole file, and the last
bytes of a file that does not match are never handed out."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from lora_hub.errors import IntegrityError
from lora_hub.hubsync.client import _checked_add_class, _HashingReader

SIZE = 3 * (1 << 20) + 12345


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def _reader(path: Path, seen: list[str | None], sent: list[int]) -> tuple[io.BufferedReader, _HashingReader]:
    raw = open(path, "rb")  # noqa: SIM115 - closed by the test
    return raw, _HashingReader(raw, SIZE, seen.append, sent.append)


def test_a_sequential_read_is_hashed_once_and_checked_at_its_last_bytes(blob: Path) -> None:
    seen: list[str | None] = []
    sent: list[int] = []
    raw, reader = _reader(blob, seen, sent)
    with raw, reader:
        while reader.read(65536):
            pass
        reader.seek(0)  # a retried PUT reads everything again
        assert reader.read() == blob.read_bytes()
    assert seen == ["sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()]
    assert sum(sent) == SIZE  # progress counts each byte once


def test_a_read_that_skips_ahead_leaves_the_check_to_a_full_hash(blob: Path) -> None:
    seen: list[str | None] = []
    raw, reader = _reader(blob, seen, [])
    with raw, reader:
        reader.seek(SIZE // 2)
        reader.read()
    assert seen == [None]


def test_a_corrupted_file_fails_before_its_last_bytes_are_read(blob: Path) -> None:
    good = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    op = _checked_add_class()(path_in_repo="adapter_model.safetensors", path_or_fileobj=blob)
    sent: list[int] = []
    op.expect(good, sent.append)
    got = bytearray()
    with pytest.raises(IntegrityError, match="corrupted in the blob store"), op.as_file() as f:
        while chunk := f.read(1 << 20):
            got += chunk
    assert len(got) < SIZE and op.failure is not None
    with op.as_file() as f, pytest.raises(IntegrityError):  # read again (a retry): refused again
        f.seek(SIZE - 10)
        f.read()


def test_out_of_order_reads_of_a_good_file_pass_after_one_full_hash(blob: Path) -> None:
    op = _checked_add_class()(path_in_repo="x.bin", path_or_fileobj=blob)
    op.expect("sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest(), None)
    with op.as_file() as f:
        f.seek(SIZE - 10)
        assert f.read() == blob.read_bytes()[-10:]
    with op.as_file() as f:  # verified: a later read is not checked again
        assert f.read() == blob.read_bytes()


def test_a_failed_check_refuses_every_later_read_of_the_same_reader(blob: Path) -> None:
    def refuse(got: str | None) -> None:
        raise IntegrityError("refused")

    with open(blob, "rb") as raw, _HashingReader(raw, SIZE, refuse, lambda n: None) as reader:
        with pytest.raises(IntegrityError):
            reader.read()
        reader.seek(0)  # what a retrying client would do
        with pytest.raises(IntegrityError):
            reader.read(1024)


def test_a_sha256_the_client_reports_is_checked_too(blob: Path) -> None:
    """hf_xet reads the files itself and reports their sha256 (``upload_info``): checked before the commit."""
    good = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    op = _checked_add_class()(path_in_repo="x.bin", path_or_fileobj=blob)
    op.expect(good, None)
    op.upload_info.sha256 = bytes.fromhex(hashlib.sha256(b"something else").hexdigest())
    with pytest.raises(IntegrityError, match="corrupted in the blob store"):
        op.check_reported()
    right = _checked_add_class()(path_in_repo="x.bin", path_or_fileobj=blob)
    right.expect(good, None)
    right.upload_info.sha256 = bytes.fromhex(good.removeprefix("sha256:"))
    right.check_reported()
