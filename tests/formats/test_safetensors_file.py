"""The strict safetensors header reader: what it accepts, what it refuses and why, and the NaN/Inf scan.

Expected values are computed here from the bytes we write, never taken from the reader itself.
"""

from __future__ import annotations

import builtins
import itertools
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import lora_hub.formats.safetensors_file as sf
from lora_hub.errors import InvalidAdapterError, PickleRefusedError, SafetensorsFormatError
from lora_hub.formats.safetensors_file import looks_like_pickle, nonfinite_tensors, read_header
from tests.helpers import TouchOnUnpickle, raw_safetensors

LIMIT = 25 * 1024 * 1024  # the documented header-size limit (25 MiB), written out independently


def entry(dtype: str, shape: list[Any], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def write(tmp_path: Path, data: bytes, name: str = "x.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path: Path, phrase: str, **kwargs: Any) -> SafetensorsFormatError:
    with pytest.raises(SafetensorsFormatError) as info:
        read_header(path, **kwargs)
    assert phrase in str(info.value), str(info.value)
    return info.value


def pickle_payload(marker: Path, protocol: int) -> bytes:
    return pickle.dumps({"weights": TouchOnUnpickle(marker)}, protocol=protocol)


# --- valid files -------------------------------------------------------------------------------

NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def test_file_written_by_safetensors_parses_with_exact_offsets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        f"t_{code.lower()}": (rng.standard_normal((3, 5)) * 10).astype(np_dtype)
        for code, np_dtype in NUMPY_DTYPES.items()
    }
    arrays["scalar"] = np.array(1.5, dtype=np.float32)
    path = tmp_path / "a.safetensors"
    save_file(arrays, str(path), metadata={"format": "pt", "note": "héllo"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])

    header = read_header(path)

    assert header.path == path
    assert header.file_size == len(raw)
    assert header.data_start == 8 + n
    assert header.metadata == {"format": "pt", "note": "héllo"}
    assert set(header.tensors) == set(arrays)
    expected_codes = {f"t_{code.lower()}": code for code in NUMPY_DTYPES} | {"scalar": "F32"}
    for name, arr in arrays.items():
        info = header.tensors[name]
        assert info.name == name
        assert info.dtype == expected_codes[name]
        assert info.shape == arr.shape
        assert info.numel == arr.size
        assert info.nbytes == arr.nbytes
        # The absolute offsets point at exactly this array's bytes in the file.
        assert raw[info.start : info.end] == arr.tobytes()
    # Tiled exactly: sorted by offset, each starts where the previous ended, the last ends the file.
    spans = sorted((t.start, t.end) for t in header)
    assert spans[0][0] == 8 + n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert spans[-1][1] == len(raw)
    # Iterating gives tensors in data order.
    assert [t.start for t in header] == sorted(t.start for t in header)


def test_hand_built_file_pins_the_format(tmp_path: Path) -> None:
    # Listed out of data order in the JSON on purpose.
    head = {
        "b": entry("I8", [4], 24, 28),
        "__metadata__": {"k": "v"},
        "a": entry("F32", [2, 3], 0, 24),
    }
    head_bytes = json.dumps(head).encode()
    data = np.arange(6, dtype="<f4").tobytes() + bytes([1, 2, 3, 4])
    path = write(tmp_path, raw_safetensors(head, data))
    n = len(head_bytes)

    header = read_header(path)

    assert header.file_size == 8 + n + 28
    assert header.data_start == 8 + n
    assert header.metadata == {"k": "v"}
    a, b = header.tensors["a"], header.tensors["b"]
    assert (a.dtype, a.shape, a.start, a.end) == ("F32", (2, 3), 8 + n, 8 + n + 24)
    assert (b.dtype, b.shape, b.start, b.end) == ("I8", (4,), 8 + n + 24, 8 + n + 28)
    assert list(header.tensors) == ["a", "b"]
    assert [t.name for t in header] == ["a", "b"]


def test_header_padded_with_trailing_spaces_is_accepted(tmp_path: Path) -> None:
    head = json.dumps({"a": entry("U8", [2], 0, 2)}).encode()
    head += b" " * (-len(head) % 8)
    header = read_header(write(tmp_path, raw_safetensors(head, b"\x01\x02")))
    assert header.data_start == 8 + len(head)
    assert header.tensors["a"].start == 8 + len(head)


def test_file_with_no_tensors_is_accepted(tmp_path: Path) -> None:
    header = read_header(write(tmp_path, raw_safetensors({})))
    assert header.tensors == {}
    assert header.metadata == {}


def test_zero_size_tensors_are_accepted_and_may_share_an_offset(tmp_path: Path) -> None:
    head = {
        "empty_start": entry("F32", [0], 0, 0),
        "empty_2d": entry("F16", [0, 5], 0, 0),
        "real": entry("F32", [1], 0, 4),
        "empty_mid": entry("I64", [3, 0], 4, 4),
        "real2": entry("U8", [2], 4, 6),
        "empty_end": entry("BF16", [0], 6, 6),
    }
    path = write(tmp_path, raw_safetensors(head, b"\x00" * 6))
    header = read_header(path)
    assert set(header.tensors) == set(head)
    n = header.data_start - 8
    assert header.tensors["empty_start"].start == header.tensors["empty_2d"].start == 8 + n
    assert header.tensors["empty_mid"].start == header.tensors["empty_mid"].end == 8 + n + 4
    assert header.tensors["empty_2d"].numel == 0
    assert header.tensors["empty_2d"].nbytes == 0
    assert nonfinite_tensors(header) == []


def test_tensor_count_at_the_limit_is_accepted(tmp_path: Path) -> None:
    head = {f"t{i}": entry("U8", [1], i, i + 1) for i in range(3)}
    header = read_header(write(tmp_path, raw_safetensors(head, b"\x00" * 3)), max_tensors=3)
    assert len(header.tensors) == 3


def test_name_of_maximum_length_is_accepted(tmp_path: Path) -> None:
    name = "n" * 1024
    header = read_header(write(tmp_path, raw_safetensors({name: entry("U8", [1], 0, 1)}, b"\x00")))
    assert list(header.tensors) == [name]


def _save_with_header_length(path: Path, target: int) -> None:
    """Write a real safetensors file (with the reference writer) whose header length is ``target``."""
    arrays = {"weight": np.zeros(2, dtype=np.float32)}
    pad = 0
    for _ in range(20):
        save_file(arrays, str(path), metadata={"pad": "x" * pad})
        (n,) = struct.unpack("<Q", path.read_bytes()[:8])
        if n == target:
            return
        pad += target - n
    raise AssertionError(f"could not reach a header length of {target}")


@pytest.mark.parametrize("header_length", [640, 896, 1152, 1408])
def test_valid_file_whose_length_bytes_resemble_a_pickle_is_accepted(tmp_path: Path, header_length: int) -> None:
    # A header length of 0x0280 (640) is written little-endian as 80 02 00 ..., the same two first
    # bytes as a protocol-2 pickle. Such a file is a perfectly valid safetensors file.
    path = tmp_path / "a.safetensors"
    _save_with_header_length(path, header_length)
    raw = path.read_bytes()
    assert raw[0] == 0x80 and 2 <= raw[1] <= 5
    with safe_open(str(path), "np") as f:  # the reference reader loads it
        assert f.get_tensor("weight").tolist() == [0.0, 0.0]

    header = read_header(path)

    assert header.data_start == 8 + header_length
    assert header.tensors["weight"].start == 8 + header_length


def test_read_header_reads_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = np.zeros(3 << 20, dtype=np.float32)  # 12 MiB of data that must not be read
    path = tmp_path / "big.safetensors"
    save_file({"big": big}, str(path))
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    read_sizes: list[int] = []

    class CountingFile:
        def __init__(self, f: Any) -> None:
            self._f = f

        def read(self, size: int = -1) -> bytes:
            data = self._f.read(size)
            read_sizes.append(len(data))
            return data

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

        def __enter__(self) -> CountingFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

    monkeypatch.setattr(sf, "open", lambda *a, **k: CountingFile(builtins.open(*a, **k)), raising=False)  # noqa: SIM115
    header = read_header(path)
    assert header.tensors["big"].nbytes == big.nbytes
    assert read_sizes, "the counting wrapper was not used"
    assert sum(read_sizes) <= 8 + n


# --- truncated and mis-sized files ----------------------------------------------------------------


@pytest.fixture
def valid_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "valid.safetensors"
    save_file({"a": np.ones((4, 4), np.float32), "b": np.ones(3, np.float16)}, str(path))
    return path.read_bytes()


@pytest.mark.parametrize("cut", [1, 6, 70])
def test_truncated_data_is_refused(tmp_path: Path, valid_bytes: bytes, cut: int) -> None:
    refused(write(tmp_path, valid_bytes[:-cut]), "truncated")


def test_file_cut_inside_the_header_is_refused(tmp_path: Path, valid_bytes: bytes) -> None:
    (n,) = struct.unpack("<Q", valid_bytes[:8])
    refused(write(tmp_path, valid_bytes[: 8 + n // 2]), "truncated: the header claims")


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x10\x00\x00\x00\x00\x00\x00"])
def test_file_shorter_than_8_bytes_is_refused(tmp_path: Path, data: bytes) -> None:
    refused(write(tmp_path, data), "fewer than the 8-byte header length")


def test_header_length_larger_than_the_file_is_refused(tmp_path: Path) -> None:
    head = json.dumps({"a": entry("U8", [1], 0, 1)}).encode()
    refused(write(tmp_path, raw_safetensors(head, b"\x00", length=len(head) + 100)), "truncated: the header claims")


@pytest.mark.parametrize("length", [LIMIT + 1, 27_000_000, 2**63, 2**64 - 1])
def test_header_length_over_the_limit_is_refused(tmp_path: Path, length: int) -> None:
    err = refused(write(tmp_path, struct.pack("<Q", length) + b"{}"), "limit")
    assert f"{LIMIT:,}" in str(err)


def test_header_length_over_the_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    # A sparse 30 MB file whose length field claims 27 MB: the claim fits in the file, so only the
    # size limit can refuse it, and it must do so before reading the claimed header.
    path = tmp_path / "sparse.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 27_000_000))
        f.truncate(30_000_000)
    refused(path, "over the")


def test_max_header_bytes_is_honoured(tmp_path: Path) -> None:
    head = json.dumps({"a": entry("U8", [1], 0, 1)}).encode()
    path = write(tmp_path, raw_safetensors(head, b"\x00"))
    assert read_header(path, max_header_bytes=len(head)).tensors["a"].nbytes == 1
    refused(path, "limit", max_header_bytes=len(head) - 1)


def test_a_folder_is_refused_as_unreadable(tmp_path: Path) -> None:
    refused(tmp_path, "cannot read")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    refused(tmp_path / "nope.safetensors", "cannot read")


# --- malformed JSON -------------------------------------------------------------------------------

ONE = '"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'


@pytest.mark.parametrize(
    ("text", "dup"),
    [
        ('{"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, ' + ONE + "}", "'t'"),
        ('{"__metadata__": {"k": "1", "k": "2"}, ' + ONE + "}", "'k'"),
        ('{"t": {"dtype": "U8", "dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', "'dtype'"),
        ('{"__metadata__": {}, "__metadata__": {}, ' + ONE + "}", "'__metadata__'"),
    ],
    ids=["tensor", "metadata-key", "entry-field", "metadata-itself"],
)
def test_duplicate_keys_are_refused(tmp_path: Path, text: str, dup: str) -> None:
    err = refused(write(tmp_path, raw_safetensors(text.encode(), b"\x00")), "duplicate key")
    assert dup in str(err)


def test_non_utf8_header_is_refused(tmp_path: Path) -> None:
    head = b'{"t\xff": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    refused(write(tmp_path, raw_safetensors(head, b"\x00")), "not UTF-8")


@pytest.mark.parametrize("head", [b"[]", b'[{"dtype": "U8"}]', b'"text"', b"42", b"null", b"", b"    "], ids=repr)
def test_header_that_is_not_a_json_object_is_refused(tmp_path: Path, head: bytes) -> None:
    refused(write(tmp_path, raw_safetensors(head)), "not a JSON object")


@pytest.mark.parametrize("head", [b"{", b'{"t": }', b'{"t": {"dtype": "U8"}} extra', b"{'t': 1}"])
def test_invalid_json_is_refused(tmp_path: Path, head: bytes) -> None:
    refused(write(tmp_path, raw_safetensors(head)), "not valid JSON")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nonstandard_json_constants_are_refused(tmp_path: Path, constant: str) -> None:
    head = '{"t": {"dtype": "U8", "shape": [' + constant + '], "data_offsets": [0, 1]}}'
    err = refused(write(tmp_path, raw_safetensors(head.encode(), b"\x00")), "non-standard JSON number")
    assert constant in str(err)


def test_integer_too_long_for_python_is_refused_cleanly(tmp_path: Path) -> None:
    # 5000 digits: Python's json raises a bare ValueError (int max_str_digits) for this.
    head = b'{"t": {"dtype": "U8", "shape": [' + b"1" * 5000 + b'], "data_offsets": [0, 1]}}'
    with pytest.raises(SafetensorsFormatError):
        read_header(write(tmp_path, raw_safetensors(head, b"\x00")))


def test_deeply_nested_json_is_refused_cleanly(tmp_path: Path) -> None:
    # 200k nested arrays: Python's json raises RecursionError for this.
    head = b'{"t": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(SafetensorsFormatError):
        read_header(write(tmp_path, raw_safetensors(head)))


# --- malformed entries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "data", "phrase"),
    [
        ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, 12, "overlaps"),
        ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 0, 8)}, 8, "overlaps"),
        ({"a": entry("F32", [1], 0, 4), "z": entry("F32", [0], 2, 2)}, 4, "overlaps"),
        ({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, 12, "gap"),
        ({"a": entry("F32", [1], 4, 8)}, 8, "gap"),
        ({"a": entry("F32", [1], 0, 4)}, 6, "2 trailing bytes"),
        ({}, 3, "3 trailing bytes"),
        ({"a": entry("F32", [3], 0, 8)}, 8, "needs 12 bytes but its offsets span 8"),
        ({"a": entry("F16", [2, 2], 0, 16)}, 16, "needs 8 bytes but its offsets span 16"),
        ({"a": entry("F32", [1], 0, 4)}, 2, "truncated"),
    ],
    ids=[
        "overlap",
        "same-offsets",
        "empty-inside-another",
        "gap-between",
        "gap-at-start",
        "trailing",
        "trailing-no-tensors",
        "too-few-bytes",
        "too-many-bytes",
        "past-the-end",
    ],
)
def test_bad_layout_is_refused(tmp_path: Path, head: dict[str, Any], data: int, phrase: str) -> None:
    refused(write(tmp_path, raw_safetensors(head, b"\x00" * data)), phrase)


@pytest.mark.parametrize("dtype", ["F7", "f32", "float32", "", "Q4_0"])
def test_unknown_dtype_is_refused(tmp_path: Path, dtype: str) -> None:
    err = refused(write(tmp_path, raw_safetensors({"a": entry(dtype, [1], 0, 4)}, b"\x00" * 4)), "unknown dtype")
    assert repr(dtype) in str(err)


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}, 4, None], ids=repr)
def test_dtype_of_the_wrong_json_type_is_refused(tmp_path: Path, dtype: Any) -> None:
    with pytest.raises(SafetensorsFormatError, match="dtype"):
        read_header(write(tmp_path, raw_safetensors({"a": entry(dtype, [1], 0, 4)}, b"\x00" * 4)))


@pytest.mark.parametrize(
    "shape", [[-1], [2, -2], [1.5], [2.0], ["2"], [None], [[1]], [True], [False], "2", 2, None], ids=repr
)
def test_bad_shape_is_refused(tmp_path: Path, shape: Any) -> None:
    head = {"a": {"dtype": "U8", "shape": shape, "data_offsets": [0, 1]}}
    refused(write(tmp_path, raw_safetensors(head, b"\x00")), "shape must be a list of non-negative integers")


@pytest.mark.parametrize(
    "offsets",
    [[8, 4], [-4, 0], [0], [0, 4, 8], [0.0, 4], [0, 4.0], [False, 4], [0, True], ["0", "4"], None, {"0": 4}],
    ids=repr,
)
def test_bad_data_offsets_are_refused(tmp_path: Path, offsets: Any) -> None:
    head = {"a": {"dtype": "U8", "shape": [4], "data_offsets": offsets}}
    refused(write(tmp_path, raw_safetensors(head, b"\x00" * 8)), "data_offsets must be [begin, end]")


@pytest.mark.parametrize(
    "value",
    [
        {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "extra": 1},
        {"dtype": "U8", "shape": [1]},
        {"dtype": "U8", "shape": [1], "offsets": [0, 1]},
        [],
        "U8",
        None,
    ],
    ids=["extra-field", "missing-field", "misspelt-field", "list", "string", "null"],
)
def test_entry_fields_are_exactly_checked(tmp_path: Path, value: Any) -> None:
    refused(
        write(tmp_path, raw_safetensors({"a": value}, b"\x00")), "needs exactly 'dtype', 'shape' and 'data_offsets'"
    )


def test_tensor_count_over_the_limit_is_refused(tmp_path: Path) -> None:
    head = {f"t{i}": entry("U8", [1], i, i + 1) for i in range(4)}
    head["__metadata__"] = {"k": "v"}  # the metadata is not a tensor and is not counted
    err = refused(write(tmp_path, raw_safetensors(head, b"\x00" * 4)), "over the limit of 3", max_tensors=3)
    assert "4 tensors" in str(err)


@pytest.mark.parametrize("name", ["a\x01b", "a\nb", "tab\there", "bell\x07", "\x7f", " lead", "trail "], ids=repr)
def test_tensor_name_with_control_or_surrounding_space_is_refused(tmp_path: Path, name: str) -> None:
    refused(write(tmp_path, raw_safetensors({name: entry("U8", [1], 0, 1)}, b"\x00")), "control")


def test_empty_tensor_name_is_refused(tmp_path: Path) -> None:
    refused(write(tmp_path, raw_safetensors({"": entry("U8", [1], 0, 1)}, b"\x00")), "name of length 0")


def test_overlong_tensor_name_is_refused(tmp_path: Path) -> None:
    refused(write(tmp_path, raw_safetensors({"n" * 1025: entry("U8", [1], 0, 1)}, b"\x00")), "name of length 1025")


@pytest.mark.parametrize(
    "metadata",
    [{"k": 1}, {"k": None}, {"k": ["v"]}, {"k": {"v": "w"}}, {"k": True}, "text", ["k", "v"], 5],
    ids=repr,
)
def test_metadata_must_map_strings_to_strings(tmp_path: Path, metadata: Any) -> None:
    head = {"__metadata__": metadata, "a": entry("U8", [1], 0, 1)}
    refused(write(tmp_path, raw_safetensors(head, b"\x00")), "__metadata__ must map strings to strings")


@pytest.mark.parametrize("metadata", [[], "", 0, False], ids=repr)
def test_falsy_non_object_metadata_is_refused(tmp_path: Path, metadata: Any) -> None:
    head = {"__metadata__": metadata, "a": entry("U8", [1], 0, 1)}
    refused(write(tmp_path, raw_safetensors(head, b"\x00")), "__metadata__ must map strings to strings")


def test_errors_are_invalid_adapter_errors_and_value_errors(tmp_path: Path) -> None:
    with pytest.raises(SafetensorsFormatError) as info:
        read_header(write(tmp_path, b"\x00"))
    assert isinstance(info.value, InvalidAdapterError)
    assert isinstance(info.value, ValueError)


# --- pickles ----------------------------------------------------------------------------------------


def test_marker_payload_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    # The control for the tests below: unpickling this payload creates the marker file.
    marker = tmp_path / "control-marker"
    obj = pickle.loads(pickle_payload(marker, protocol=2))
    obj["weights"].close()
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_is_refused_without_being_unpickled(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "MARKER"
    payload = pickle_payload(marker, protocol)
    assert payload[0] == 0x80 and payload[1] == protocol
    path = write(tmp_path, payload, "adapter_model.safetensors")

    with pytest.raises(PickleRefusedError) as info:
        read_header(path)

    assert "pickle" in info.value.message
    assert info.value.hint is not None
    assert "safetensors" in info.value.hint and "convert" in info.value.hint
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_short_pickle_is_refused_as_pickle(tmp_path: Path, protocol: int) -> None:
    payload = pickle.dumps(1, protocol=protocol)[:5]
    with pytest.raises(PickleRefusedError):
        read_header(write(tmp_path, payload))


def test_plain_pickle_of_a_dict_is_refused(tmp_path: Path) -> None:
    for protocol in range(2, 6):
        with pytest.raises(PickleRefusedError):
            read_header(write(tmp_path, pickle.dumps({"a": 1}, protocol=protocol)))


def test_zipped_pickle_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(path, "w") as zf:  # the layout torch.save uses
        zf.writestr("archive/data.pkl", pickle_payload(marker, 2))
        zf.writestr("archive/version", "3\n")
    assert path.read_bytes()[:4] == b"PK\x03\x04"

    with pytest.raises(PickleRefusedError) as info:
        read_header(path)

    assert info.value.hint is not None and "safetensors" in info.value.hint
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 1])
def test_old_protocol_pickles_are_refused_without_being_unpickled(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "MARKER"
    with pytest.raises(SafetensorsFormatError):
        read_header(write(tmp_path, pickle_payload(marker, protocol)))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"PK\x03\x04rest", True),
        (b"\x80\x02", True),
        (b"\x80\x05\x95", True),
        (b"\x80\x01", False),
        (b"\x80\x06", False),
        (b"\x80", False),
        (b"PK\x05\x06", False),
        (b"", False),
        (b"{\x00\x00\x00\x00\x00\x00\x00", False),
    ],
)
def test_looks_like_pickle(head: bytes, expected: bool) -> None:
    assert looks_like_pickle(head) is expected


# --- NaN / Inf scan -----------------------------------------------------------------------------------

BIG_BYTES = 12 << 20  # 12 MiB per tensor: more than the 8 MiB scan chunk


def _big_with_last(np_dtype: Any, value: float) -> np.ndarray:
    arr = np.ones(BIG_BYTES // np.dtype(np_dtype).itemsize, dtype=np_dtype)
    arr[-1] = value
    return arr


def _finite_extremes(np_dtype: Any) -> np.ndarray:
    fi = np.finfo(np_dtype)
    return np.array(
        [fi.max, -fi.max, fi.tiny, -fi.tiny, fi.smallest_subnormal, -fi.smallest_subnormal, 0.0, -0.0, 1.0],
        dtype=np_dtype,
    )


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16, np.float64], ids=["F32", "F16", "F64"])
def test_nonfinite_values_are_found_in_every_float_dtype(tmp_path: Path, np_dtype: Any) -> None:
    arrays = {
        "nan": _big_with_last(np_dtype, np.nan),
        "pinf": _big_with_last(np_dtype, np.inf),
        "ninf": _big_with_last(np_dtype, -np.inf),
        "big_finite": _big_with_last(np_dtype, np.finfo(np_dtype).max),
        "extremes": _finite_extremes(np_dtype),
        "nan_first": np.array([np.nan, 1.0], dtype=np_dtype),
        "ints": np.full(64, -1, dtype=np.int64),
    }
    assert np.isfinite(arrays["extremes"]).all() and np.isfinite(arrays["big_finite"]).all()
    path = tmp_path / "a.safetensors"
    save_file(arrays, str(path))

    found = nonfinite_tensors(read_header(path))

    assert sorted(found) == ["nan", "nan_first", "ninf", "pinf"]


def test_nonfinite_values_are_found_in_bfloat16(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as torch_save_file

    n = BIG_BYTES // 2

    def big(value: float) -> Any:
        t = torch.ones(n, dtype=torch.bfloat16)
        t[-1] = value
        return t

    fi = torch.finfo(torch.bfloat16)
    extremes = torch.tensor(
        [fi.max, -fi.max, fi.tiny, -fi.tiny, fi.tiny / 4, -fi.tiny / 4, 0.0, -0.0], dtype=torch.bfloat16
    )
    assert extremes[4].item() != 0.0  # a real subnormal, not flushed to zero
    tensors = {
        "nan": big(float("nan")),
        "pinf": big(float("inf")),
        "ninf": big(float("-inf")),
        "big_finite": big(fi.max),
        "extremes": extremes,
        "ints": torch.full((64,), -1, dtype=torch.int16),
    }
    assert bool(torch.isfinite(tensors["extremes"]).all()) and bool(torch.isfinite(tensors["big_finite"]).all())
    path = tmp_path / "a.safetensors"
    torch_save_file(tensors, str(path))
    header = read_header(path)
    assert header.tensors["nan"].dtype == "BF16"

    assert sorted(nonfinite_tensors(header)) == ["nan", "ninf", "pinf"]


@pytest.mark.parametrize(
    ("dtype", "word_type", "pattern", "bad"),
    [
        ("F32", "<u4", 0x7F800001, True),  # signalling NaN
        ("F32", "<u4", 0xFFC00000, True),  # negative quiet NaN
        ("F32", "<u4", 0x7F7FFFFF, False),  # max finite
        ("F32", "<u4", 0x00000001, False),  # smallest subnormal
        ("F16", "<u2", 0x7C01, True),
        ("F16", "<u2", 0xFE00, True),
        ("F16", "<u2", 0xFC00, True),  # -Inf
        ("F16", "<u2", 0x7BFF, False),
        ("BF16", "<u2", 0x7F81, True),
        ("BF16", "<u2", 0xFFC0, True),
        ("BF16", "<u2", 0x7F80, True),  # +Inf
        ("BF16", "<u2", 0x7F7F, False),  # max finite
        ("BF16", "<u2", 0x8001, False),  # negative subnormal
        ("F64", "<u8", 0x7FF0000000000001, True),
        ("F64", "<u8", 0xFFF0000000000000, True),  # -Inf
        ("F64", "<u8", 0x7FEFFFFFFFFFFFFF, False),
    ],
)
def test_nonfinite_scan_by_bit_pattern(tmp_path: Path, dtype: str, word_type: str, pattern: int, bad: bool) -> None:
    words = np.array([0, pattern, 0], dtype=word_type).tobytes()
    head = {"w": entry(dtype, [3], 0, len(words))}
    header = read_header(write(tmp_path, raw_safetensors(head, words)))
    assert nonfinite_tensors(header) == (["w"] if bad else [])


@pytest.mark.parametrize(
    ("dtype", "word_type"),
    [("I32", "<u4"), ("U32", "<u4"), ("I16", "<u2"), ("U16", "<u2"), ("I64", "<u8"), ("U8", "u1"), ("BOOL", "u1")],
)
def test_integer_tensors_are_never_reported(tmp_path: Path, dtype: str, word_type: str) -> None:
    # All bits set, and the float NaN/Inf exponent patterns: none of this is a float.
    words = np.array([np.iinfo(word_type).max, 0x7F80 & np.iinfo(word_type).max, 0x7C00 & 0xFF], dtype=word_type)
    data = words.tobytes()
    head = {"i": entry(dtype, [3], 0, len(data))}
    assert nonfinite_tensors(read_header(write(tmp_path, raw_safetensors(head, data)))) == []


def test_nonfinite_scan_only_looks_at_the_named_tensors(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_file(
        {
            "bad1": np.array([1.0, np.nan], np.float32),
            "bad2": np.array([np.inf], np.float32),
            "good": np.ones(3, np.float32),
        },
        str(path),
    )
    header = read_header(path)
    assert nonfinite_tensors(header, ["bad2", "good"]) == ["bad2"]
    assert nonfinite_tensors(header, ["good"]) == []
    assert nonfinite_tensors(header, []) == []
    assert sorted(nonfinite_tensors(header)) == ["bad1", "bad2"]
