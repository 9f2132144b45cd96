"""Video and frame-folder readers: decoding, sampling options and clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from infer_fakes import make_frames, write_folder, write_video
from PIL import Image

from gemdepth.inference.readers import InputError, find_inputs, natural_key, open_source


def test_lossless_video_round_trip_and_sampling(tmp_path: Path) -> None:
    frames = make_frames(30, 24, 32)
    path = write_video(tmp_path / "clip.mkv", frames)
    src = open_source(path)
    assert (src.name, src.height, src.width, src.fps, src.frame_count) == ("clip", 24, 32, 25.0, 30)
    np.testing.assert_array_equal(np.stack(list(src)), frames)
    np.testing.assert_array_equal(np.stack(list(src)), frames)  # re-iterable
    picked = open_source(path, start=3, end=20, stride=4)
    np.testing.assert_array_equal(np.stack(list(picked)), frames[3:20:4])
    assert picked.fps == 25.0 / 4 and picked.frame_count == 5
    by_rate = open_source(path, fps=12.5)
    assert by_rate.fps == 12.5 and len(list(by_rate)) == 15
    small = open_source(path, max_resolution=16)
    assert (small.height, small.width) == (12, 16) and next(iter(small)).shape == (12, 16, 3)


@pytest.mark.parametrize(
    ("ext", "codec", "pix_fmt"),
    [
        ("mp4", "libx264", "yuv420p"),
        ("mov", "mpeg4", "yuv420p"),
        ("avi", "mjpeg", "yuvj420p"),
        ("webm", "libvpx-vp9", "yuv420p"),
    ],
)
def test_lossy_containers_decode(tmp_path: Path, ext: str, codec: str, pix_fmt: str) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV's FFmpeg has no {codec}")
    frames = make_frames(12, 48, 64, noise=0.0)
    out = np.stack(list(open_source(write_video(tmp_path / f"clip.{ext}", frames, codec, pix_fmt))))
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - frames).mean() < 12


def test_frame_folder_natural_order(tmp_path: Path) -> None:
    frames = make_frames(12, 20, 30)
    folder = write_folder(tmp_path / "shots", frames)
    src = open_source(folder, stride=2)
    assert src.name == "shots" and src.fps == 15.0
    np.testing.assert_array_equal(np.stack(list(src)), frames[::2])  # frame10 after frame9
    assert sorted(["f10.png", "f9.png", "F1.png"], key=natural_key) == ["F1.png", "f9.png", "f10.png"]
    smooth = make_frames(3, 20, 30, noise=0.0)
    jpg = open_source(write_folder(tmp_path / "jpgs", smooth, "jpg"))
    assert np.abs(np.stack(list(jpg)).astype(int) - smooth).mean() < 8


def test_single_image_is_a_one_frame_video(tmp_path: Path) -> None:
    frame = make_frames(1, 20, 30)[0]
    Image.fromarray(frame).save(tmp_path / "still.png")
    src = open_source(tmp_path / "still.png")
    assert src.name == "still" and src.frame_count == 1
    np.testing.assert_array_equal(next(iter(src)), frame)


def test_folder_of_videos_expands(tmp_path: Path) -> None:
    frames = make_frames(3, 16, 16)
    (tmp_path / "vids").mkdir()
    for name in ["b10.mkv", "b2.mkv"]:
        write_video(tmp_path / "vids" / name, frames)
    (tmp_path / "vids" / "notes.txt").write_text("not a video")
    assert [p.name for p in find_inputs([tmp_path / "vids"])] == ["b2.mkv", "b10.mkv"]


# --------------------------------------------------------------------------- bad input
def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.mp4: the file is empty"):
        open_source(tmp_path / "empty.mp4")


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video at all" * 100)
    with pytest.raises(InputError, match=r"junk\.mp4: cannot be opened as a video"):
        open_source(tmp_path / "junk.mp4")


def test_truncated_video_fails_with_a_clear_message(tmp_path: Path) -> None:
    path = write_video(tmp_path / "cut.mp4", make_frames(20, 48, 64), "libx264", "yuv420p")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"cut\.mp4"):
        src = open_source(path)
        list(src)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="the folder has no images"):
        open_source(tmp_path / "nothing")


def test_mixed_sizes_name_the_file(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "mixed", make_frames(4, 20, 30))
    Image.fromarray(make_frames(1, 22, 30)[0]).save(folder / "frame3.png")
    with pytest.raises(InputError, match=r"frame3\.png: image is 22x30 but frame0\.png is 20x30"):
        open_source(folder)


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "bad", make_frames(3, 20, 30))
    (folder / "frame1.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match=r"frame1\.png: cannot be read as an image"):
        open_source(folder)


def test_absurd_sizes(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(InputError, match="absurd"):
        open_source(tmp_path / "dot.png")
    Image.new("RGB", (9000, 8)).save(tmp_path / "strip.png")
    with pytest.raises(InputError, match="larger than 8192"):
        open_source(tmp_path / "strip.png")
    with pytest.raises(InputError, match="aspect ratio over 20:1"):
        open_source(tmp_path / "strip.png", max_resolution=4000)


def test_unsupported_and_missing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported input type"):
        open_source(tmp_path / "a.txt")
    with pytest.raises(InputError, match="no such file"):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="either a frame stride or a target fps"):
        open_source(tmp_path / "a.txt", fps=10, stride=2)
