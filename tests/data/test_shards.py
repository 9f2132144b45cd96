"""Shard writer/reader: round trips, atomicity, checksums and bad-input errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from gemdepth.data import ClipError, ShardError, read_clips, read_sequences, validate_clip, write_corpus
from gemdepth.data.schema import clip_key, sanitise_name
from gemdepth.data.shards import _encode_clip, read_index, resolve_shards, sha256_file
from shard_helpers import register_raw_shard


def make_clip(sequence: str = "seq", first: int = 0, t: int = 4, h: int = 56, w: int = 56,
              pose: bool = True, corpus: str = "toy", seed: int = 0) -> dict:
    """A smooth, valid clip (smooth so JPEG error is small and meaningful)."""
    rng = np.random.default_rng(seed + first)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6, size=(t, 1, 1, 3)).astype(np.float32)
    rgb = 127 + 100 * np.sin(xx[None, ..., None] / 9 + yy[None, ..., None] / 13 + phase)
    depth = (0.5 + 50 * rng.uniform(size=(t, 1, 1)) * (1 + xx / w) * (1 + yy / h)).astype(np.float32)
    depth[:, :3, :3] = 0.0  # invalid pixels
    extr = np.tile(np.eye(4, dtype=np.float32), (t, 1, 1))
    angle = rng.uniform(-1, 1, size=t)
    extr[:, 0, 0] = extr[:, 2, 2] = np.cos(angle)
    extr[:, 0, 2], extr[:, 2, 0] = np.sin(angle), -np.sin(angle)
    extr[:, :3, 3] = rng.normal(size=(t, 3))
    intr = np.tile(np.array([[40.0, 0, w / 2], [0, 41.0, h / 2], [0, 0, 1]], np.float32), (t, 1, 1))
    return {
        "rgb": rgb.clip(0, 255).astype(np.uint8), "depth": depth, "intrinsics": intr,
        "extrinsics": extr if pose else None,
        "sky": rng.uniform(size=(t, h, w)) > 0.8,
        "meta": {"corpus": corpus, "sequence": sequence, "frame_indices": list(range(first, first + t)),
                 "depth_kind": "metric", "has_pose": pose, "licence": "test", "image_size": [h, w],
                 "timestamps": [0.1 * i for i in range(first, first + t)]},
    }


def test_round_trip_within_tolerances(tmp_path: Path) -> None:
    clips = [make_clip("a", 0), make_clip("a", 4), make_clip("b/c.d", 0)]
    index = write_corpus(clips, tmp_path, "toy", clips_per_shard=2, progress=False)
    back = list(read_clips(tmp_path))
    assert [c["__key__"] for c in back] == ["toy__a__0", "toy__a__4", "toy__b-c-d__0"]
    for src, got in zip(clips, back):
        assert got["rgb"].dtype == np.uint8 and got["rgb"].shape == src["rgb"].shape
        assert np.abs(got["rgb"].astype(int) - src["rgb"]).mean() < 2.0  # JPEG q95
        ok = src["depth"] > 0
        rel = np.abs(got["depth"][ok] - src["depth"][ok]) / src["depth"][ok]
        assert rel.max() <= 1e-3  # float16: <= 2^-11
        assert (got["depth"][~ok] == 0).all()
        np.testing.assert_array_equal(got["intrinsics"], src["intrinsics"])
        np.testing.assert_array_equal(got["extrinsics"], src["extrinsics"])
        np.testing.assert_array_equal(got["sky"], src["sky"])
        assert got["meta"] == src["meta"]
    assert index["complete"] and index["clips"] == 3 and index["frames"] == 12
    assert index["sequences"] == 2 and index["image_sizes"] == [[56, 56]]
    assert index["has_pose"] is True and index["depth_kind"] == "metric"
    assert [s["clips"] for s in index["shards"]] == [2, 1]
    for shard in index["shards"]:
        assert sha256_file(tmp_path / shard["name"]) == shard["sha256"]
    assert read_index(tmp_path) == json.loads(json.dumps(index))


def test_pose_free_round_trip_and_far_depth(tmp_path: Path) -> None:
    clip = make_clip(pose=False)
    clip["depth"][0, 10, 10] = 1e6  # beyond float16: saturates, stays finite
    write_corpus([clip], tmp_path, "toy", progress=False)
    (got,) = read_clips(tmp_path)
    assert got["extrinsics"] is None and got["meta"]["has_pose"] is False
    assert got["depth"][0, 10, 10] == pytest.approx(65504.0)


def test_read_sequences_concatenates_in_frame_order(tmp_path: Path) -> None:
    clips = [make_clip("a", 0), make_clip("a", 2), make_clip("a", 6), make_clip("b", 0)]
    write_corpus(clips, tmp_path, "toy", clips_per_shard=3, progress=False)
    seqs = list(read_sequences(tmp_path))
    assert [s["meta"]["sequence"] for s in seqs] == ["a", "b"]
    a = seqs[0]
    assert a["meta"]["frame_indices"] == list(range(10))
    assert a["meta"]["timestamps"] == pytest.approx([0.1 * i for i in range(10)])
    assert a["depth"].shape == (10, 56, 56) and a["extrinsics"].shape == (10, 4, 4)
    # frames 2, 3 come from the first clip (kept once), frames 4, 5 from the second
    np.testing.assert_array_equal(a["extrinsics"][2:4], clips[0]["extrinsics"][2:4])
    np.testing.assert_array_equal(a["extrinsics"][4:6], clips[1]["extrinsics"][2:4])
    assert a["meta"]["clip_keys"] == ["toy__a__0", "toy__a__2", "toy__a__6"]


def test_read_sequences_rejects_scattered_sequence(tmp_path: Path) -> None:
    write_corpus([make_clip("a", 0), make_clip("b", 0), make_clip("a", 4)], tmp_path, "toy",
                 progress=False)
    with pytest.raises(ShardError, match="reappears"):
        list(read_sequences(tmp_path))


def test_interrupted_write_leaves_no_finished_looking_shard_and_resumes(tmp_path: Path) -> None:
    clips = [make_clip("s", 4 * i) for i in range(5)]

    def crashing():
        yield from clips[:3]
        raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        write_corpus(crashing(), tmp_path, "toy", clips_per_shard=2, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["toy-000000.tar"]
    assert read_index(tmp_path)["complete"] is False
    with pytest.raises(ShardError, match="incomplete"):
        list(read_clips(tmp_path))
    index = write_corpus(clips, tmp_path, "toy", clips_per_shard=2, progress=False, resume=True)
    assert index["complete"] and index["clips"] == 5
    assert index["shards"][0]["sha256"] == sha256_file(tmp_path / "toy-000000.tar")
    assert [c["__key__"] for c in read_clips(tmp_path)] == [f"toy__s__{4 * i}" for i in range(5)]


def test_crash_inside_shard_write_leaves_no_shard(tmp_path: Path, monkeypatch) -> None:
    def broken_write(self, obj):
        raise OSError("disk full")

    monkeypatch.setattr(wds.TarWriter, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_corpus([make_clip()], tmp_path, "toy", progress=False)
    # no shard, no temp file; only the "complete": false index that makes readers refuse it
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]
    assert read_index(tmp_path)["complete"] is False
    monkeypatch.undo()
    (tmp_path / ".toy-000000.tar.tmp-999").write_bytes(b"half a shard")  # a crashed process's
    write_corpus([make_clip()], tmp_path, "toy", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "toy-000000.tar"]


def test_overwrite_removes_stale_shards(tmp_path: Path) -> None:
    write_corpus([make_clip("s", 4 * i) for i in range(3)], tmp_path, "toy", clips_per_shard=1,
                 progress=False)
    index = write_corpus([make_clip("t", 0)], tmp_path, "toy", clips_per_shard=1, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["toy-000000.tar"]
    assert [c["meta"]["sequence"] for c in read_clips(tmp_path)] == ["t"]
    assert index["clips"] == 1


def test_checksum_mismatch_names_the_shard(tmp_path: Path) -> None:
    write_corpus([make_clip()], tmp_path, "toy", progress=False)
    shard = tmp_path / "toy-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"toy-000000\.tar.*checksum mismatch"):
        list(read_clips(tmp_path))


def test_truncated_shard_is_reported(tmp_path: Path) -> None:
    write_corpus([make_clip("a", 0), make_clip("a", 4)], tmp_path, "toy", progress=False)
    shard = tmp_path / "toy-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2 + 100])
    with pytest.raises(ShardError, match="corrupt or truncated|missing"):
        list(read_clips(shard, verify=False))


def _write_raw_tar(path: Path, samples: list[dict]) -> None:
    register_raw_shard(path, samples)  # listed in a complete index: readers reach the samples


def test_missing_frame_field_names_sample_and_field(tmp_path: Path) -> None:
    sample = _encode_clip(make_clip(), "toy__seq__0", 95)
    del sample["depth.0002.png"]
    _write_raw_tar(tmp_path / "bad.tar", [sample])
    with pytest.raises(ShardError, match=r"bad\.tar.*toy__seq__0.*'depth'.*frame 2"):
        list(read_clips(tmp_path / "bad.tar"))


def test_corrupt_image_names_field(tmp_path: Path) -> None:
    sample = _encode_clip(make_clip(), "toy__seq__0", 95)
    sample["rgb.0001.jpg"] = b"not a jpeg"
    _write_raw_tar(tmp_path / "bad.tar", [sample])
    with pytest.raises(ShardError, match=r"toy__seq__0.*'rgb'.*undecodable"):
        list(read_clips(tmp_path / "bad.tar"))


def test_nan_depth_in_shard_is_reported(tmp_path: Path) -> None:
    clip = make_clip()
    sample = _encode_clip(clip, "toy__seq__0", 95)
    bad = clip["depth"][1].copy()
    bad[5, 5] = np.nan
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(bad.astype(np.float16).view(np.uint16)).save(buf, format="PNG")
    sample["depth.0001.png"] = buf.getvalue()
    _write_raw_tar(tmp_path / "bad.tar", [sample])
    with pytest.raises(ShardError, match="NaN"):
        list(read_clips(tmp_path / "bad.tar"))


def _break(field: str):
    def apply(clip: dict) -> None:
        if field == "missing":
            del clip["intrinsics"]
        elif field == "dtype":
            clip["depth"] = clip["depth"].astype(np.float64)
        elif field == "shape":
            clip["intrinsics"] = np.zeros((4, 4, 4), np.float32)
        elif field == "nan":
            clip["depth"][0, 1, 1] = np.inf
        elif field == "pose":
            clip["extrinsics"] = None
        elif field == "rotation":
            clip["extrinsics"][1, :3, :3] *= 2
        elif field == "size":
            clip["meta"]["image_size"] = [56, 57]
        elif field == "order":
            clip["meta"]["frame_indices"] = [0, 2, 1, 3]
        elif field == "meta":
            del clip["meta"]["licence"]
        elif field == "kind":
            clip["meta"]["depth_kind"] = "inverse"
        elif field == "mask":
            clip["sky"] = clip["sky"].astype(np.uint8)
        elif field == "torch":
            import torch

            clip["rgb"] = torch.from_numpy(clip["rgb"])
    return apply


@pytest.mark.parametrize("case, field, text", [
    ("missing", "intrinsics", "missing"),
    ("dtype", "depth", "float32"),
    ("shape", "intrinsics", r"shape \(4, 3, 3\)"),
    ("nan", "depth", "NaN/inf"),
    ("pose", "extrinsics", "has_pose"),
    ("rotation", "extrinsics", "orthonormal"),
    ("size", "meta.image_size", r"\[56, 56\]"),
    ("order", "meta.frame_indices", "increasing"),
    ("meta", "meta.licence", "licence"),
    ("kind", "meta.depth_kind", "relative-disparity"),
    ("mask", "sky", "bool"),
    ("torch", "rgb", "numpy"),
])
def test_validate_clip_names_the_field(case: str, field: str, text: str) -> None:
    clip = make_clip()
    validate_clip(clip)
    _break(case)(clip)
    with pytest.raises(ClipError, match=text) as info:
        validate_clip(clip)
    assert info.value.field == field
    assert field.split(".")[-1] in str(info.value)


def test_writer_rejects_inconsistent_corpus(tmp_path: Path) -> None:
    with pytest.raises(ClipError, match="has_pose"):
        write_corpus([make_clip("a"), make_clip("b", pose=False)], tmp_path, "toy", progress=False)
    with pytest.raises(ClipError, match="corpus"):
        write_corpus([make_clip(corpus="other")], tmp_path / "x", "toy", progress=False)
    with pytest.raises(ClipError, match="duplicate"):
        write_corpus([make_clip("a"), make_clip("a")], tmp_path / "y", "toy", progress=False)
    with pytest.raises(ValueError, match="no clips"):
        write_corpus([], tmp_path / "z", "toy", progress=False)
    with pytest.raises(ValueError, match="key-safe"):
        write_corpus([make_clip()], tmp_path / "w", "bad.name", progress=False)


def test_locating_shards(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no shards"):
        list(read_clips(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such"):
        list(read_clips(tmp_path / "nowhere"))
    write_corpus([make_clip("a", 4 * i) for i in range(3)], tmp_path / "toy", "toy",
                 clips_per_shard=1, progress=False)
    write_corpus([make_clip("b", corpus="two")], tmp_path / "two", "two", progress=False)
    assert len(resolve_shards(tmp_path)) == 4  # folder of corpus folders
    picked = list(read_clips(str(tmp_path / "toy" / "toy-00000{0,2}.tar")))
    assert [c["__key__"] for c in picked] == ["toy__a__0", "toy__a__8"]
    assert {c["meta"]["corpus"] for c in read_clips(tmp_path)} == {"toy", "two"}


def test_keys_are_sanitised() -> None:
    assert clip_key("vkitti2", "Scene01/15-deg-left", 7) == "vkitti2__Scene01-15-deg-left__7"
    assert sanitise_name("a__b.c d") == "a_b-c-d"
    with pytest.raises(ClipError):
        sanitise_name("...")


def test_shards_are_plain_webdataset_tars(tmp_path: Path) -> None:
    write_corpus([make_clip()], tmp_path, "toy", progress=False)
    with tarfile.open(tmp_path / "toy-000000.tar") as tar:
        names = tar.getnames()
    assert "toy__seq__0.meta.json" in names and "toy__seq__0.rgb.0003.jpg" in names
    (sample,) = wds.WebDataset(str(tmp_path / "toy-000000.tar"), shardshuffle=False)
    assert json.loads(sample["meta.json"])["meta"]["sequence"] == "seq"


# --------------------------------------------------------------------------- interrupted rewrites
def _tars_read(folder: Path) -> list[str] | None:
    """Keys a reader gets from ``folder``, or None when it refuses the folder."""
    from gemdepth.data.shards import IncompleteCorpusError

    try:
        return [c["__key__"] for c in read_clips(folder)]
    except IncompleteCorpusError as exc:
        assert str(folder) in str(exc) and "--resume" in str(exc)
        return None


def test_reader_refuses_folder_of_shards_without_complete_index(tmp_path: Path) -> None:
    from gemdepth.data.shards import IncompleteCorpusError

    write_corpus([make_clip("s", 4 * i) for i in range(3)], tmp_path / "c", "toy",
                 clips_per_shard=1, progress=False)
    (tmp_path / "c" / "index.json").unlink()  # what the old writer did first on a rewrite
    for target in (tmp_path / "c", tmp_path / "c" / "toy-000001.tar", tmp_path,
                   str(tmp_path / "c" / "toy-00000{0,1}.tar")):
        with pytest.raises(IncompleteCorpusError, match="no index.json") as info:
            list(read_clips(target))
        assert str(tmp_path / "c") in str(info.value)
        assert "gemdepth data convert FORMAT ROOT" in str(info.value)
        assert "--resume" in str(info.value)
    with pytest.raises(IncompleteCorpusError, match="no index.json"):
        list(read_sequences(tmp_path / "c"))
    from gemdepth.evaluation.datamodule import plan_sequences
    from gemdepth.evaluation.protocol import get_protocol

    with pytest.raises(IncompleteCorpusError, match=r"no index\.json.*--resume"):
        plan_sequences(tmp_path / "c", get_protocol("bonn"))  # the evaluation data module


def test_interrupted_rewrite_is_refused_until_resumed(tmp_path: Path) -> None:
    old = [make_clip("old", 4 * i) for i in range(3)]
    write_corpus(old, tmp_path, "toy", clips_per_shard=1, progress=False)
    new = [make_clip("new", 4 * i) for i in range(4)]

    def crashing():
        yield new[0]  # one clip in: the first new shard (2 clips) is not written yet
        raise KeyboardInterrupt("kill")

    with pytest.raises(KeyboardInterrupt):
        write_corpus(crashing(), tmp_path, "toy", clips_per_shard=2, progress=False,
                     resume_hint="gemdepth data convert toy raw out --resume")
    # the old shards are all still there, but the folder is no corpus any more
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [f"toy-00000{i}.tar" for i in range(3)]
    with pytest.raises(ShardError, match=r"incomplete.*`gemdepth data convert toy raw out "
                                         r"--resume`.*without --resume"):
        list(read_clips(tmp_path))
    with pytest.raises(ShardError, match="incomplete"):
        list(read_clips(tmp_path / "toy-000002.tar"))
    index = write_corpus(new, tmp_path, "toy", clips_per_shard=2, progress=False, resume=True)
    assert index["complete"] and [c["__key__"] for c in read_clips(tmp_path)] == [
        f"toy__new__{4 * i}" for i in range(4)]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["toy-000000.tar", "toy-000001.tar"]


def test_crash_before_the_first_clip_keeps_the_old_corpus(tmp_path: Path) -> None:
    write_corpus([make_clip("old", 0)], tmp_path, "toy", progress=False)

    def broken_source():
        raise OSError("raw data unreadable")
        yield  # pragma: no cover

    with pytest.raises(OSError):
        write_corpus(broken_source(), tmp_path, "toy", progress=False)
    assert [c["__key__"] for c in read_clips(tmp_path)] == ["toy__old__0"]
    with pytest.raises(ValueError, match="no clips"):
        write_corpus([], tmp_path, "toy", progress=False)
    assert read_index(tmp_path)["complete"] is True


@pytest.mark.parametrize("after", [False, True], ids=["before-op", "after-op"])
def test_kill_at_any_file_operation_leaves_old_corpus_or_a_refused_one(
        tmp_path: Path, monkeypatch, after: bool) -> None:
    """A rewrite of a 3-shard corpus into a 2-shard one is killed at its k-th rename or delete
    (before or after the operation), for every k: readers then see the old corpus, the new
    one, or refuse the folder; never a mix, never old shards passing as a corpus."""
    import os

    old = [make_clip("old", 4 * i) for i in range(3)]
    new = [make_clip("new", 4 * i) for i in range(4)]
    old_keys = [f"toy__old__{4 * i}" for i in range(3)]
    new_keys = [f"toy__new__{4 * i}" for i in range(4)]
    real_replace, real_unlink = os.replace, Path.unlink

    class Killed(BaseException):
        pass

    k, outcomes = 0, set()
    while True:
        k += 1
        folder = tmp_path / f"run{k}"
        write_corpus(old, folder, "toy", clips_per_shard=1, progress=False)
        calls = [0]

        def step(real):
            def op(*args, **kwargs):
                calls[0] += 1
                if calls[0] == k and not after:
                    raise Killed
                result = real(*args, **kwargs)
                if calls[0] == k:
                    raise Killed
                return result
            return op

        monkeypatch.setattr(os, "replace", step(real_replace))
        monkeypatch.setattr(Path, "unlink", step(real_unlink))
        try:
            write_corpus(new, folder, "toy", clips_per_shard=2, progress=False)
            finished = True
        except Killed:
            finished = False
        monkeypatch.undo()
        keys = _tars_read(folder)
        assert keys in (None, old_keys, new_keys), (k, keys)
        outcomes.add("refused" if keys is None else "old" if keys == old_keys else "new")
        for tar in folder.glob("*.tar"):  # a shard read on its own: listed and verified, or refused
            try:
                got = [c["__key__"] for c in read_clips(tar)]
            except ShardError:
                continue
            assert set(got) <= set(keys or [])
        if finished:
            assert keys == new_keys and sorted(p.name for p in folder.iterdir()) == [
                "index.json", "toy-000000.tar", "toy-000001.tar"]
            break
    assert k > 5 and {"refused", "new"} <= outcomes
