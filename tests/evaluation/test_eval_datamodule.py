"""EvalDataModule: sequence planning from index.json, rank/worker split, short sequences, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_helpers import plane_sequence, write_sequences
from gemdepth.evaluation import get_protocol
from gemdepth.evaluation.datamodule import EvalDataModule, SequenceDataset, plan_sequences, protocol_arguments


@pytest.fixture
def scannet_corpus(tmp_path):
    seqs = {}
    for name, t in (("scene0002_00", 9), ("scene0000_00", 7), ("scene0001_00", 11)):
        seq = plane_sequence(t, 14, 28)
        seq["frame_indices"] = list(range(0, 2 * t, 2))  # every other source frame was exported
        seqs[name] = seq
    return write_sequences(tmp_path / "scannet", "scannet", seqs, clip_length=4, clips_per_shard=2)


def test_plan_picks_sorted_sequences_and_only_their_shards(scannet_corpus) -> None:
    import json

    index = json.loads((scannet_corpus / "index.json").read_text())
    names, shards = plan_sequences(scannet_corpus, get_protocol("scannet", max_sequences=2))
    assert names == ["scene0000_00", "scene0001_00"]  # sorted, the first two
    for name in names:
        holding = {scannet_corpus / s["name"] for s in index["shards"] if name in s["sequences"]}
        assert {p for p in map(type(scannet_corpus), shards[name])} == holding
    explicit, _ = plan_sequences(scannet_corpus, get_protocol("scannet", sequences=("scene0002_00", "scene0000_00")))
    assert explicit == ["scene0002_00", "scene0000_00"]


def test_plan_errors(scannet_corpus, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"sequence\(s\) \['scene9'\].*not in the corpus"):
        plan_sequences(scannet_corpus, get_protocol("scannet", sequences=("scene9",)))
    with pytest.raises(ValueError, match="holds corpus 'scannet' but protocol 'bonn'"):
        plan_sequences(scannet_corpus, get_protocol("bonn"))
    with pytest.raises(FileNotFoundError, match="gemdepth data convert bonn"):
        plan_sequences(tmp_path / "nowhere", get_protocol("bonn"))
    free = plane_sequence(4, 14, 28)
    free["extrinsics"] = None
    write_sequences(tmp_path / "free", "scannet", {"s": free})
    with pytest.raises(ValueError, match="no camera poses.*TAE"):
        plan_sequences(tmp_path / "free", get_protocol("scannet_tae"))


def _dm(path, **kw) -> EvalDataModule:
    args = protocol_arguments(get_protocol("scannet", sampling={"start": 2, "stop": None, "step": 2, "max_frames": 6}))
    args.update({"crop": [1, -1, 3, None], **kw})
    return EvalDataModule(str(path), **args)


def test_samples_are_prepared_and_short_ones_flagged(scannet_corpus) -> None:
    samples = list(_dm(scannet_corpus).iter_samples())
    assert [s["name"] for s in samples] == ["scene0000_00", "scene0001_00", "scene0002_00"]
    by_name = {s["name"]: s for s in samples}
    assert by_name["scene0000_00"]["frame_indices"] == [2, 4, 6, 8, 10, 12]
    assert by_name["scene0001_00"]["frames"] == 6 and by_name["scene0001_00"]["requested_frames"] == 6
    s = by_name["scene0000_00"]
    assert s["rgb"].shape == (6, 12, 25, 3) and s["depth"].shape == s["valid"].shape == (6, 12, 25)
    assert s["gt_box"] == [1, 3, 12, 25]
    short = list(_dm(scannet_corpus, max_frames=12).iter_samples())  # 6, 10 and 8 frames exist
    assert [x["frames"] < x["requested_frames"] for x in short] == [True, True, True]


def test_ranks_and_workers_split_sequences_exactly(scannet_corpus, monkeypatch) -> None:
    import gemdepth.evaluation.datamodule as dmod

    proto = get_protocol("scannet", sampling={"start": 0, "stop": None, "step": 1, "max_frames": None}, crop=None)
    names, shards = plan_sequences(scannet_corpus, proto)
    seen = []
    for rank in range(2):
        for worker in range(2):
            class Info:
                num_workers, id = 2, worker
            monkeypatch.setattr(dmod, "get_worker_info", lambda: Info)
            seen += [s["name"] for s in SequenceDataset(scannet_corpus, proto, names, shards, rank, 2)]
    assert sorted(seen) == sorted(names)  # each sequence exactly once over 2 ranks × 2 workers


def test_dataloader_with_workers_and_without_index(scannet_corpus) -> None:
    dm = _dm(scannet_corpus, num_workers=2)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert sorted(b["name"] for b in batches) == ["scene0000_00", "scene0001_00", "scene0002_00"]
    b = batches[0]
    assert isinstance(b["rgb"], np.ndarray) and b["rgb"].dtype == np.uint8
    assert dm.transfer_batch_to_device(b, torch.device("meta"), 0) is b  # stays on the CPU
    shard = sorted(scannet_corpus.glob("*.tar"))[0]  # a single shard: no index to plan from
    names = [s["name"] for s in _dm(shard, max_sequences=1).iter_samples()]
    assert names == ["scene0002_00"]  # stored order (the corpus was written in this order)


def test_datamodule_validates_its_arguments(tmp_path) -> None:
    with pytest.raises(KeyError, match="unknown metric"):
        EvalDataModule(str(tmp_path), metrics=["AbsRel", "Sharpness"])
    with pytest.raises(ValueError, match="unknown reference quirk"):
        EvalDataModule(str(tmp_path), reference_quirks=["nope"])
    with pytest.raises(ValueError, match="pose_noise"):
        EvalDataModule(str(tmp_path), pose_noise=[-0.1])


class _QuietHandler:
    """``http.server``'s file handler without request logging (built lazily: tests import fast)."""

    @staticmethod
    def serve(root):
        import functools
        import http.server
        import threading

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                functools.partial(Handler, directory=str(root)))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def test_a_corpus_url_plans_and_reads_like_the_folder(scannet_corpus) -> None:
    """``data.path`` may be the corpus's URL (as for training): the same sequences, shards (by
    name, as URLs) and prepared samples as the local folder; a URL without index.json is an
    error naming it."""
    from gemdepth.data.shards import IncompleteCorpusError

    httpd, root = _QuietHandler.serve(scannet_corpus.parent)
    try:
        url = f"{root}/{scannet_corpus.name}"
        proto = get_protocol("scannet", max_sequences=2)
        names, shards = plan_sequences(scannet_corpus, proto)
        url_names, url_shards = plan_sequences(url + "/", proto)
        assert url_names == names
        assert {n: [s.rsplit("/", 1)[-1] for s in v] for n, v in url_shards.items()} == \
            {n: [s.rsplit("/", 1)[-1] for s in v] for n, v in shards.items()}
        assert all(s.startswith(url + "/") for v in url_shards.values() for s in v)
        local, remote = list(_dm(scannet_corpus).iter_samples()), list(_dm(url).iter_samples())
        assert [s["name"] for s in remote] == [s["name"] for s in local] and len(local) == 3
        for a, b in zip(local, remote):
            for key in ("rgb", "depth", "valid"):
                np.testing.assert_array_equal(np.asarray(b[key]), np.asarray(a[key]))
            assert b["frame_indices"] == a["frame_indices"]
        with pytest.raises(IncompleteCorpusError, match=r"127\.0\.0\.1.*nowhere"):
            plan_sequences(f"{root}/nowhere", proto)
    finally:
        httpd.shutdown()
        httpd.server_close()
