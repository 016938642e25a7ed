#!/usr/bin/env python3
"""Writes the small .npy / .npz / .safetensors / raw files that tests/test_{npy,npz,safetensors,raw}.cpp
and tests/test_activation_stream.cpp read.

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

Broken files (prefix bad_ / st_bad_ / raw_bad_ / npz_bad_) each carry one defect, named in the file
name. The npz files are written by numpy's own np.savez / np.savez_compressed (through the zipfile
module); the broken ones patch single fields of such an archive, at offsets found by parsing it
here, and the zip64 archive, which zipfile only writes beyond 4 GiB, is assembled by hand and
checked by reading it back with zipfile and np.load.
Hand-built npy headers are not padded, so a byte offset in an error message is 10 (the v1.0
preamble) plus the position in the header text shown here.
"""

import io
import json
import os
import struct
import warnings
import zipfile
import zlib

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


def savez_bytes(compressed=False, seekable=True, **arrays):
    """The bytes np.savez (or np.savez_compressed) writes for `arrays`."""
    class Unseekable:  # a pipe-like target: zipfile then writes data descriptors (flag bit 3)
        def __init__(self):
            self.data = b""

        def write(self, b):
            self.data += bytes(b)
            return len(b)

        def flush(self):
            pass

        def read(self, *args):
            raise io.UnsupportedOperation

        def seekable(self):
            return False

        def tell(self):
            raise io.UnsupportedOperation

    target = io.BytesIO() if seekable else Unseekable()
    (np.savez_compressed if compressed else np.savez)(target, **arrays)
    return target.getvalue() if seekable else target.data


def zip_layout(data):
    """Offsets in a small zip archive: end record, central directory, its entries' fields."""
    eocd = data.rindex(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<II", data, eocd + 12)
    entries = []
    p = cd_offset
    while p < cd_offset + cd_size:
        n, m, k = struct.unpack_from("<HHH", data, p + 28)
        local = struct.unpack_from("<I", data, p + 42)[0]
        name = data[p + 46:p + 46 + n].decode()
        entries.append({"cd": p, "local": local, "name": name})
        p += 46 + n + m + k
    return eocd, cd_offset, entries


def patched(data, offset, fmt, value):
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def npy_bytes(arr):
    b = io.BytesIO()
    np.lib.format.write_array(b, arr, allow_pickle=False)
    return b.getvalue()


def zip64_archive(members):
    """A stored zip archive in zip64 form: every size and offset in the central directory is
    0xffffffff with the real value in a zip64 extra field, and the end record defers to a zip64
    end-of-central-directory record found through the zip64 locator."""
    out = b""
    central = b""
    for name, payload in members:
        n = name.encode()
        crc = zlib.crc32(payload)
        local_extra = struct.pack("<HHQQ", 1, 16, len(payload), len(payload))
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF,
                           0xFFFFFFFF, len(n), len(local_extra)) + n + local_extra + payload
        extra = struct.pack("<HHQQQ", 1, 24, len(payload), len(payload), offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc,
                               0xFFFFFFFF, 0xFFFFFFFF, len(n), len(extra), 0, 0, 0, 0,
                               0xFFFFFFFF) + n + extra
    cd_offset = len(out)
    out += central
    zip64_eocd = len(out)
    count = len(members)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(central),
                       cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, zip64_eocd, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return out


def fixed_time(name):
    """A stored zip member dated 1980-01-01, as np.savez dates its members (reproducible)."""
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


def check_npz(data, expected):
    """Reads `data` back with zipfile and np.load and compares with `expected` (name -> array)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
    with np.load(io.BytesIO(data)) as f:
        assert sorted(f.files) == sorted(expected)
        for k, arr in expected.items():
            assert f[k].dtype == arr.dtype and np.array_equal(f[k], arr)


def good_npz():
    a = matrix(3, 5).astype("<f4")
    b = matrix(1, 4)[0].astype("<f8")
    c = tensor3(2, 3, 4).astype(">f2")
    d = np.asfortranarray(matrix(3, 5).astype("<f8"))
    write("npz_named.npz", savez_bytes(a=a, b=b, c=c, d=d))
    write("npz_positional.npz", savez_bytes(arr_0=matrix(2, 3).astype("<f4"),
                                            arr_1=matrix(4, 2).astype("<f8")))
    write("npz_unseekable.npz", savez_bytes(seekable=False, a=a))
    # np.savez plus a member that is not an array (ignored by the reader).
    buf = io.BytesIO(savez_bytes(a=a))
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr(fixed_time("notes.txt"), "not an array\n")
    write("npz_extra_member.npz", buf.getvalue())
    zip64 = zip64_archive([("a.npy", npy_bytes(a)), ("b.npy", npy_bytes(b))])
    check_npz(zip64, {"a": a, "b": b})
    write("npz_zip64.npz", zip64)
    write("npz_compressed.npz", savez_bytes(compressed=True, a=a))
    # Stream test shard: 6 rows of 4 columns; column 0 is the row label 500 + r.
    acts = matrix(6, 4)
    acts[:, 0] = 500 + np.arange(6)
    write("stream_ids.npz", savez_bytes(acts=acts.astype("<f4"), labels=np.arange(6.0)))


def bad_npz():
    a = matrix(3, 5).astype("<f4")
    base = savez_bytes(a=a)
    eocd, cd_offset, entries = zip_layout(base)
    cd, local = entries[0]["cd"], entries[0]["local"]
    write("npz_bad_empty.npz", b"")
    write("npz_bad_short.npz", b"PK\x05\x06")
    write("npz_bad_not_zip.npz", npy_bytes(a))
    write("npz_bad_truncated.npz", base[:-10])
    write("npz_bad_local_sig.npz", patched(base, local, "<I", 0x04034B51))
    write("npz_bad_cd_sig.npz", patched(base, cd, "<I", 0x02014B51))
    write("npz_bad_cd_offset.npz", patched(base, eocd + 16, "<I", 100000))
    write("npz_bad_entry_count.npz",
          patched(patched(base, eocd + 8, "<H", 50), eocd + 10, "<H", 50))
    write("npz_bad_local_offset.npz", patched(base, cd + 42, "<I", cd_offset - 10))
    write("npz_bad_name_mismatch.npz", patched(base, local + 30, "<B", ord("b")))
    write("npz_bad_method_mismatch.npz", patched(base, local + 8, "<H", 8))
    write("npz_bad_encrypted.npz", patched(base, cd + 8, "<H", 1))
    write("npz_bad_multidisk.npz", patched(base, eocd + 4, "<H", 1))
    write("npz_bad_data_past_cd.npz",
          patched(patched(base, cd + 20, "<I", 100000), cd + 24, "<I", 100000))
    write("npz_bad_stored_sizes.npz", patched(base, cd + 24, "<I", 10))
    write("npz_bad_zip64_missing.npz", patched(base, eocd + 16, "<I", 0xFFFFFFFF))
    zip64 = zip64_archive([("a.npy", npy_bytes(a))])
    locator = zip64.rindex(b"PK\x06\x07")
    write("npz_bad_zip64_locator.npz", patched(zip64, locator + 8, "<Q", 2**40))
    z64_cd = zip64.index(b"PK\x01\x02")
    # The zip64 extra field's own length: 8 bytes cannot hold the three 64-bit values.
    write("npz_bad_zip64_extra.npz", patched(zip64, z64_cd + 46 + len("a.npy") + 2, "<H", 8))
    # A member whose npy image is cut short (stored with zipfile directly).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(fixed_time("a.npy"), npy_bytes(a)[:-8])
    write("npz_bad_member_npy.npz", buf.getvalue())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            z.writestr(fixed_time("a.npy"), npy_bytes(a))
            z.writestr(fixed_time("a.npy"), npy_bytes(a))
    write("npz_bad_duplicate.npz", buf.getvalue())


if __name__ == "__main__":
    good_npy()
    bad_npy()
    good_safetensors()
    bad_safetensors()
    raw_files()
    good_npz()
    bad_npz()
