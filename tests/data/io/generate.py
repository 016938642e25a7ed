#!/usr/bin/env python3
"""Writes the small .npy / .safetensors / raw files that tests/test_{npy,safetensors,raw}.cpp read.

Run from anywhere:  python3 tests/data/io/generate.py   (needs numpy only; safetensors files are
written by hand with struct + json, so neither torch nor the safetensors package is needed).
The outputs are committed next to this script; re-running it reproduces them byte for byte.

Values. Every numeric array is a view of the matrix

    v(r, c) = (+1 if c is even else -1) * (10 * r + c + 0.25)

  * a 2-D array of shape (R, C) holds v(r, c);
  * a 1-D array of n elements holds v(0, c), c < n;
  * a 3-D array of shape (A, B, C) holds a[i, j, k] = v(i * B + j, k), so that flattening its
    leading dimensions gives v again.

All values used are exact in float16 and bfloat16 (at most 8 significant bits).
The special-value files hold fixed bit patterns (listed below) that the tests decode by hand.

Broken files (prefix bad_ / st_bad_ / raw_bad_) each carry one defect, named in the file name.
Hand-built npy headers are not padded, so a byte offset in an error message is 10 (the v1.0
preamble) plus the position in the header text shown here.
"""

import json
import os
import struct

import numpy as np

OUT = os.path.dirname(os.path.abspath(__file__))


def v(r, c):
    return (1.0 if c % 2 == 0 else -1.0) * (10 * r + c + 0.25)


def matrix(rows, cols):
    return np.array([[v(r, c) for c in range(cols)] for r in range(rows)], dtype=np.float64)


def tensor3(a, b, c):
    return matrix(a * b, c).reshape(a, b, c)


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def save(name, arr, version=(1, 0)):
    with open(os.path.join(OUT, name), "wb") as f:
        np.lib.format.write_array(f, arr, version=version, allow_pickle=False)


def npy_raw(header, data=b"", version=1, header_len=None):
    """An npy file with the given header text (not padded) and data bytes."""
    h = header.encode("latin1")
    n = len(h) if header_len is None else header_len
    if version == 1:
        pre = b"\x93NUMPY\x01\x00" + struct.pack("<H", n)
    else:
        pre = b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", n)
    return pre + h + data


def st_raw(header_text, data=b"", header_len=None):
    """A safetensors file with the given header text (padded to 8) and data bytes."""
    h = header_text.encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    n = len(h) if header_len is None else header_len
    return struct.pack("<Q", n) + h + data


def st_file(tensors, metadata=None):
    """tensors: list of (name, dtype string, shape, raw little-endian bytes), in storage order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return st_raw(json.dumps(header, separators=(",", ":")), data)


def bf16_bytes(arr):
    """float values (all exact in bfloat16) -> little-endian bfloat16 bytes."""
    bits = np.asarray(arr, dtype="<f4").view("<u4") >> 16
    assert np.all((np.asarray(arr, dtype="<f4").view("<u4") & 0xFFFF) == 0)
    return bits.astype("<u2").tobytes()


# Bit patterns of the special-value files (the tests decode them independently).
F16_SPECIAL = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0xC000, 0x7BFF, 0x7C00, 0xFC00,
               0x7E00, 0x8001, 0x3555]
BF16_SPECIAL = [0x0000, 0x8000, 0x0001, 0x007F, 0x0080, 0x3F80, 0xC000, 0x7F7F, 0x7F80, 0xFF80,
                0x7FC0, 0x3EAB]

F4 = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }"
DATA35 = matrix(3, 5).astype("<f4").tobytes()


def good_npy():
    m = matrix(3, 5)
    for code in ("f4", "f8", "f2"):
        save(f"{code}_le_c.npy", m.astype("<" + code))
        save(f"{code}_be_c.npy", m.astype(">" + code))
    save("f4_le_fortran.npy", np.asfortranarray(m.astype("<f4")))
    save("f8_be_fortran.npy", np.asfortranarray(m.astype(">f8")))
    save("f4_1d.npy", matrix(1, 7)[0].astype("<f4"))
    save("f4_3d_c.npy", tensor3(2, 3, 4).astype("<f4"))
    save("f8_3d_fortran.npy", np.asfortranarray(tensor3(2, 3, 4).astype("<f8")))
    save("f2_3d_fortran_be.npy", np.asfortranarray(tensor3(2, 3, 4).astype(">f2")))
    save("v2_f4.npy", m.astype("<f4"), version=(2, 0))
    save("v3_f8.npy", m.astype("<f8"), version=(3, 0))
    mask = np.array([1 if i % 3 == 0 else 0 for i in range(10)])
    save("mask_u1.npy", mask.astype(np.uint8))
    save("mask_b1.npy", mask.astype(np.bool_))
    write("mask_u1_lt.npy", npy_raw("{'descr': '<u1', 'fortran_order': False, 'shape': (10,)}",
                                    mask.astype(np.uint8).tobytes()))
    save("empty_rows.npy", np.zeros((0, 4), dtype="<f4"))
    save("scalar.npy", np.array(2.5, dtype="<f8"))
    # Keys in another order, double quotes, Python 2 long suffixes, no trailing comma.
    write("keys_reordered.npy",
          npy_raw('{"shape": (3L, 5L), "fortran_order": False, "descr": "<f4"}\n', DATA35))
    bits = np.array(F16_SPECIAL, dtype=np.uint16)
    save("f2_special.npy", bits.astype("<u2").view("<f2"))
    save("f2_special_be.npy", bits.astype("<u2").view("<f2").astype(">f2"))


def bad_npy():
    write("bad_empty.npy", b"")
    write("bad_short.npy", b"\x93NUM")
    write("bad_magic.npy", b"\x93NUMPX" + npy_raw(F4, DATA35)[6:])
    write("bad_version.npy", b"\x93NUMPY\x04\x00" + npy_raw(F4, DATA35)[8:])
    write("bad_truncated_preamble_v2.npy", b"\x93NUMPY\x02\x00\x10\x00\x00")
    write("bad_header_past_end.npy", npy_raw(F4, b"", header_len=1000))
    write("bad_dict_colon.npy",
          npy_raw("{'descr' '<f4', 'fortran_order': False, 'shape': (3, 5), }", DATA35))
    write("bad_dict_unterminated_string.npy", npy_raw("{'descr': '<f4}"))
    write("bad_dict_unclosed.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), ", DATA35))
    write("bad_dict_trailing.npy", npy_raw(F4 + " xyz", DATA35))
    write("bad_dict_deep.npy", npy_raw("{'descr': " + "(" * 100 + ")" * 100 + "}"))
    write("bad_dict_name.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': false, 'shape': (3, 5), }", DATA35))
    write("bad_not_dict.npy", npy_raw("('<f4', False, (3, 5))", DATA35))
    write("bad_missing_shape.npy", npy_raw("{'descr': '<f4', 'fortran_order': False}", DATA35))
    write("bad_duplicate_key.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': False, 'descr': '<f4', 'shape': (3, 5)}",
                  DATA35))
    write("bad_unknown_key.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), 'foo': 1}", DATA35))
    write("bad_dtype.npy", npy_raw("{'descr': '<i4', 'fortran_order': False, 'shape': (3, 5)}",
                                   DATA35))
    write("bad_structured.npy",
          npy_raw("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,)}", DATA35))
    write("bad_fortran_type.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': 0, 'shape': (3, 5)}", DATA35))
    write("bad_shape_negative.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 5)}", DATA35))
    write("bad_shape_float.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (3.5, 5)}", DATA35))
    write("bad_shape_string.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': ('3', 5)}", DATA35))
    write("bad_shape_list.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': [3, 5]}", DATA35))
    write("bad_shape_overflow.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, "
                  "1099511627776)}", DATA35))
    write("bad_shape_bytes_overflow.npy",
          npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (2147483648, 2147483648)}",
                  DATA35))
    write("bad_int_too_large.npy",
          npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 5)}",
                  DATA35))
    write("bad_truncated_data.npy", npy_raw(F4, DATA35[:20]))
    write("bad_trailing_data.npy", npy_raw(F4, DATA35 + b"\0\0\0\0"))
    write("bad_mask_2d.npy",
          npy_raw("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3)}", b"\x01" * 6))


def good_safetensors():
    a = matrix(3, 5).astype("<f4").tobytes()
    b = matrix(1, 4)[0].astype("<f8").tobytes()
    c = matrix(2, 3).astype("<f2").tobytes()
    d = bf16_bytes(tensor3(2, 3, 4))
    e = np.array([7, -7], dtype="<i4").tobytes()
    write("st_mixed.safetensors", st_file([
        ("b_f64", "F64", (4,), b),
        ("a_f32", "F32", (3, 5), a),
        ("c_f16", "F16", (2, 3), c),
        ("d_bf16_3d", "BF16", (2, 3, 4), d),
        ("e_i32", "I32", (2,), e),
        ("f_empty", "F32", (0, 3), b""),
    ], metadata={"format": "pt", "note": "generated by generate.py"}))
    write("st_special.safetensors", st_file([
        ("bf16_bits", "BF16", (len(BF16_SPECIAL),),
         np.array(BF16_SPECIAL, dtype="<u2").tobytes()),
        ("f16_bits", "F16", (len(F16_SPECIAL),), np.array(F16_SPECIAL, dtype="<u2").tobytes()),
    ]))


def bad_safetensors():
    f32 = matrix(3, 5).astype("<f4").tobytes()  # 60 bytes

    def entry(dtype="F32", shape=(3, 5), offsets=(0, 60)):
        return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}

    def one(name, hdr, data=f32):
        write(name, st_raw(json.dumps(hdr, separators=(",", ":")), data))

    write("st_bad_empty.safetensors", b"")
    write("st_bad_short.safetensors", b"\x10\x00\x00\x00\x00")
    write("st_bad_header_past_end.safetensors", st_raw('{"a":1}', b"", header_len=1000))
    write("st_bad_header_huge.safetensors", st_raw("{}", b"", header_len=2**64 - 1))
    write("st_bad_json.safetensors", st_raw('{"a": ', f32))
    write("st_bad_not_object.safetensors", st_raw("[1,2]", f32))
    write("st_bad_duplicate.safetensors",
          st_raw('{"a":{"dtype":"F32","shape":[3,5],"data_offsets":[0,60]},'
                 '"a":{"dtype":"F32","shape":[3,5],"data_offsets":[0,60]}}', f32))
    write("st_bad_deep.safetensors", st_raw('{"a":' + "[" * 100 + "]" * 100 + "}", f32))
    one("st_bad_entry_not_object.safetensors", {"a": 5})
    one("st_bad_missing_dtype.safetensors", {"a": {"shape": [3, 5], "data_offsets": [0, 60]}})
    one("st_bad_dtype_type.safetensors", {"a": entry(dtype=5)})
    one("st_bad_shape_negative.safetensors", {"a": entry(shape=(-3, 5))})
    one("st_bad_shape_float.safetensors", {"a": entry(shape=(3.5, 5))})
    one("st_bad_shape_overflow.safetensors", {"a": entry(shape=(2**40, 2**40))})
    one("st_bad_offsets_count.safetensors", {"a": entry(offsets=(0,))})
    one("st_bad_offsets_past_end.safetensors", {"a": entry(offsets=(0, 100))})
    one("st_bad_offsets_reversed.safetensors", {"a": entry(offsets=(60, 0))})
    one("st_bad_size_mismatch.safetensors", {"a": entry(offsets=(0, 40))})
    one("st_bad_overlap.safetensors",
        {"a": entry(shape=(2, 5), offsets=(0, 40)), "b": entry(shape=(2, 5), offsets=(20, 60))})
    one("st_bad_metadata_value.safetensors", {"__metadata__": {"k": 1}, "a": entry()})


def raw_files():
    m = matrix(6, 4)
    write("raw_f32.bin", m.astype("<f4").tobytes())
    write("raw_f16_be.bin", m.astype(">f2").tobytes())
    write("raw_bad_size.bin", m.astype("<f4").tobytes() + b"\0\0\0")


if __name__ == "__main__":
    good_npy()
    bad_npy()
    good_safetensors()
    bad_safetensors()
    raw_files()
