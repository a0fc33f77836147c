"""OIP tensor codec and .proto, without a server: encodings, errors, wire compatibility."""

import importlib.util
import struct

import numpy as np
import pytest

from services.oip import codec
from services.oip.codec import TensorError, from_list, from_raw
from services.oip.proto import grpc_predict_v2_pb2 as pb


def test_bytes_encoding_is_length_prefixed_and_round_trips():
    array = np.array([b"ab", b"", "é".encode()], dtype=object)
    raw = codec.serialize_bytes(array)
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 2) + "é".encode()
    back = codec.deserialize_bytes(raw, 3)
    assert list(back) == [b"ab", b"", "é".encode()]


def test_bytes_encoding_matches_tritonclient():
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    array = np.array([[b"\x00\xffimage"], [b"x" * 300]], dtype=object)
    ours = codec.serialize_bytes(array)
    assert ours == serialize_byte_tensor(array).item()
    assert list(deserialize_bytes_tensor(ours)) == list(array.reshape(-1))
    tensor = codec.from_raw("image", "BYTES", [2, 1], ours)
    assert tensor.shape == [2, 1] and tensor.data[1, 0] == b"x" * 300


@pytest.mark.parametrize("raw, count, message", [
    (b"\x05\x00", 1, "4-byte length"),
    (struct.pack("<I", 9) + b"abc", 1, "claims 9 bytes"),
    (struct.pack("<I", 1) + b"a", 2, "holds 1 elements"),
])
def test_bad_bytes_data_is_refused(raw, count, message):
    with pytest.raises(TensorError, match=message):
        codec.deserialize_bytes(raw, count, "image")


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"])
def test_raw_round_trip_every_numeric_type(datatype):
    dtype = codec.NUMPY_DTYPES[datatype]
    array = (np.arange(6) % 2).astype(dtype).reshape(2, 3) if datatype == "BOOL" else np.arange(6).astype(dtype).reshape(2, 3)
    tensor = codec.from_raw("x", datatype, [2, 3], array.tobytes())
    np.testing.assert_array_equal(tensor.data, array)
    assert codec.to_raw(tensor) == array.tobytes()


def test_raw_size_must_match_shape():
    with pytest.raises(TensorError, match="needs 24"):
        codec.from_raw("pixels", "FP32", [2, 3], b"\x00" * 20)


@pytest.mark.parametrize("datatype, shape, data, message", [
    ("FP32", [2], [1.0], "1 elements"),
    ("INT32", [1], [1.5], "not a INT32"),
    ("UINT8", [1], [300], "do not fit"),
    ("BOOL", [1], [1], "not a BOOL"),
    ("BYTES", [1], [3], "must be strings"),
    ("FP32", [1], ["a"], "not a FP32"),
    ("BF16", [1], [1.0], "not supported"),
    ("FP32", [-1], [], "non-negative"),
])
def test_json_data_errors(datatype, shape, data, message):
    with pytest.raises(TensorError, match=message):
        codec.from_list("x", datatype, shape, data)


def test_json_data_flat_or_nested():
    flat = codec.from_list("x", "FP32", [2, 2], [1, 2, 3, 4.5])
    nested = codec.from_list("x", "FP32", [2, 2], [[1, 2], [3, 4.5]])
    np.testing.assert_array_equal(flat.data, nested.data)
    assert flat.data.dtype == np.float32
    assert codec.to_list(codec.Tensor("y", "BYTES", np.array([b"bird"], dtype=object))) == ["bird"]


def test_protobuf_contents_round_trip_and_wrong_field():
    contents = pb.InferTensorContents()
    codec.fill_contents(codec.Tensor("p", "FP32", np.array([[0.5, 1.0]], dtype=np.float32)), contents)
    assert list(contents.fp32_contents) == [0.5, 1.0]
    back = codec.from_contents("p", "FP32", [1, 2], contents)
    np.testing.assert_array_equal(back.data, [[0.5, 1.0]])
    wrong = pb.InferTensorContents(int64_contents=[1, 2])
    with pytest.raises(TensorError, match="belongs in contents.fp32_contents"):
        codec.from_contents("p", "FP32", [1, 2], wrong)
    with pytest.raises(TensorError, match="raw_input_contents"):
        codec.from_contents("p", "FP16", [1], pb.InferTensorContents())


def _fields(descriptor):
    out = {}
    for f in descriptor.fields:
        out[f.name] = (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None)
    return out


def test_proto_is_wire_compatible_with_tritonclient():
    """Every message and field we declare exists in tritonclient's copy, same number and type."""
    from tritonclient.grpc import service_pb2 as theirs

    def check(ours, their):
        assert ours.full_name == their.full_name
        mine, other = _fields(ours), _fields(their)
        for name, spec in mine.items():
            assert other.get(name) == spec, (ours.full_name, name, spec, other.get(name))
        for nested in ours.nested_types:
            check(nested, their.nested_types_by_name[nested.name])

    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        check(message, theirs.DESCRIPTOR.message_types_by_name[name])
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    their = theirs.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        other = their.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name, other.output_type.full_name)
    assert sorted(m.name for m in ours.methods) == sorted(
        ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"])


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (dev extra) not installed")
def test_generated_module_is_reproducible(tmp_path):
    from services.oip.proto import generate

    fresh = generate.generate(tmp_path).read_text()
    committed = (generate.HERE / generate.MODULE).read_text()
    version_line = lambda text: next(line for line in text.splitlines() if "Protobuf Python Version" in line)  # noqa: E731
    if version_line(fresh) != version_line(committed):
        pytest.skip(f"installed grpcio-tools writes {version_line(fresh)!r}, committed: {version_line(committed)!r}")
    assert fresh == committed, "run: python -m services.oip.proto.generate"


def test_a_json_list_longer_than_its_shape_is_refused_before_it_is_walked():
    with pytest.raises(TensorError, match="more than 1 elements"):
        from_list("image", "BYTES", [1], ["a"] * 1_000_000)
    with pytest.raises(TensorError, match="more than 2 elements"):
        from_list("x", "FP32", [2], [[1.0, 2.0], [3.0]])


def test_json_data_nested_deeper_than_any_tensor_is_refused():
    data = 1.0
    for _ in range(1000):
        data = [data]
    with pytest.raises(TensorError, match="nested deeper"):
        from_list("x", "FP32", [1], data)


def test_raw_bytes_holding_more_elements_than_the_shape_are_refused_at_the_first_extra_one():
    raw = struct.pack("<I", 0) * 1_000_000  # a million empty elements for a shape of [1]
    with pytest.raises(TensorError, match="more than 1 elements"):
        from_raw("image", "BYTES", [1], raw)
