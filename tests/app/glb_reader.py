"""A small, independent GLB (binary glTF 2.0) reader for the tests: the JSON and every
accessor as a numpy array (float32 / uint8 / uint16 / uint32 components, tightly packed)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

_COMPONENTS = {5126: np.float32, 5121: np.uint8, 5123: np.uint16, 5125: np.uint32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def read_glb(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    raw = Path(path).read_bytes()
    magic, version, length = struct.unpack_from("<4sII", raw, 0)
    assert magic == b"glTF" and version == 2 and length == len(raw)
    json_len, json_type = struct.unpack_from("<I4s", raw, 12)
    assert json_type == b"JSON" and json_len % 4 == 0
    gltf = json.loads(raw[20 : 20 + json_len])
    bin_at = 20 + json_len
    bin_len, bin_type = struct.unpack_from("<I4s", raw, bin_at)
    assert bin_type == b"BIN\x00" and bin_at + 8 + bin_len == len(raw)
    blob = raw[bin_at + 8 : bin_at + 8 + bin_len]
    assert gltf["buffers"][0]["byteLength"] == bin_len
    arrays = []
    for acc in gltf["accessors"]:
        view = gltf["bufferViews"][acc["bufferView"]]
        dtype = np.dtype(_COMPONENTS[acc["componentType"]])
        width = _WIDTH[acc["type"]]
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        data = np.frombuffer(blob, dtype, acc["count"] * width, start).reshape(acc["count"], width)
        if "min" in acc:  # POSITION accessors must carry exact bounds
            np.testing.assert_allclose(data.min(0), acc["min"], rtol=1e-6)
            np.testing.assert_allclose(data.max(0), acc["max"], rtol=1e-6)
        arrays.append(data)
    return gltf, arrays
