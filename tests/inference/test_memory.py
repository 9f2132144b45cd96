"""Host memory stays flat with video length: retained frames, traced allocations, process RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
from infer_fakes import FakeVideoModel

from gemdepth.inference import InferenceOptions, OutputOptions, infer_video, run_source
from gemdepth.inference.readers import FrameSource


class _Frames(FrameSource):
    """Frames made on the fly; counts how many are alive at once (weak references)."""

    def __init__(self, n: int, height: int = 48, width: int = 64) -> None:
        self.n, self.height, self.width = n, height, width
        self.path, self.name, self.fps, self.source_fps, self.frame_count = Path("gen"), "gen", 10.0, 10.0, n
        self.alive = 0
        self.peak_alive = 0

    def _gone(self) -> None:
        self.alive -= 1

    def __iter__(self):
        rng = np.random.default_rng(0)
        for _ in range(self.n):
            frame = rng.integers(0, 256, (self.height, self.width, 3), dtype=np.uint8)
            self.alive += 1
            self.peak_alive = max(self.peak_alive, self.alive)
            weakref.finalize(frame, self._gone)
            yield frame


def _stream(n: int) -> tuple[int, int]:
    source = _Frames(n)
    tracemalloc.start()
    for result in infer_video(FakeVideoModel().eval(), source, input_size=28):
        del result
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return source.peak_alive, peak


def test_streaming_retains_a_bounded_number_of_frames() -> None:
    alive_short, traced_short = _stream(40)
    alive_long, traced_long = _stream(400)
    assert alive_long == alive_short <= 32 + 8 + 1  # one window plus the pending cross-fade
    # 360 more frames would add 3.3 MB of frames and 4.4 MB of depth if anything piled up
    assert traced_long <= 1.1 * traced_short + 256 * 1024


def test_pipeline_memory_is_flat(tmp_path: Path) -> None:
    """Reader → windowing → every writer: traced peak for 40 and 200 frames (after a warm-up run
    that pays the one-off allocations). 160 more frames hold 3.4 MB of frames and depth."""
    peaks = []
    for n in (10, 40, 200):
        tracemalloc.start()
        # the point cloud grows until it holds ply_max_points voxels (by design): keep that small
        run_source(
            FakeVideoModel().eval(),
            _Frames(n),
            tmp_path / str(n),
            InferenceOptions(input_size=28),
            OutputOptions(progress=False, ply_max_points=2000),
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[2] <= 1.1 * peaks[1] + 256 * 1024, peaks


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch
    sys.path.insert(0, sys.argv[1])
    torch.set_num_threads(1)
    from infer_fakes import FakeVideoModel
    from gemdepth.inference import infer_video

    def frames(n):
        rng = np.random.default_rng(0)
        for _ in range(n):
            yield rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)

    peaks = []
    for n in (40, 400):
        assert sum(1 for _ in infer_video(FakeVideoModel().eval(), frames(n), input_size=28)) == n
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(peaks))
    """
)


def test_peak_process_memory_is_flat() -> None:
    """Peak RSS of a fresh process after 40 frames of 240×320, then after 400 more: keeping the
    frames and depth maps would add about 200 MB; the streaming run adds nothing."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
        timeout=180,
    )
    short, long = json.loads(out.stdout.strip().splitlines()[-1])
    assert long < short + 20, (short, long)
