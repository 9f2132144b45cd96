"""Helpers of the data tests (imported as ``shard_helpers``): hand-made shards that a buggy or
foreign writer could have produced, registered in a complete ``index.json`` so that readers
get past the corpus-level checks and meet the bad samples themselves."""

from __future__ import annotations

import json
from pathlib import Path

from gemdepth.data.shards import INDEX_NAME, _write_shard, read_index


def register_raw_shard(path: Path, samples: list[dict], corpus: str = "toy") -> Path:
    """Write ``samples`` (webdataset dicts) as shard ``path`` and list it, with its sha256, in
    the complete index of its folder (created when absent). Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = _write_shard(path, samples)
    index = read_index(path.parent) or {"format_version": 1, "corpus": corpus, "complete": True,
                                        "shards": []}
    index["shards"] = [s for s in index["shards"] if s["name"] != path.name]
    index["shards"].append({"name": path.name, "sha256": digest, "bytes": path.stat().st_size,
                            "clips": len(samples), "frames": 0,
                            "keys": [s["__key__"] for s in samples], "sequences": [],
                            "image_sizes": []})
    (path.parent / INDEX_NAME).write_text(json.dumps(index))
    return path


def replace_member(shard: Path, member: str, data: bytes) -> None:
    """Swap one member of a shard for ``data`` in place, leaving ``index.json`` (and its
    sha256) as it was: what a tool editing a shard behind the corpus's back does."""
    import io
    import tarfile

    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    names = [m.name for m, _ in members]
    assert member in names, f"{member} not in {shard} ({names[:4]}...)"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for m, payload in members:
            if m.name == member:
                payload = data
                m.size = len(data)
            out.addfile(m, io.BytesIO(payload))
    shard.write_bytes(buf.getvalue())
