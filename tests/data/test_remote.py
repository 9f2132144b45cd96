"""Shards from URLs: a real HTTP server on 127.0.0.1 (a thread of the test process) serving a
synthetic corpus, with shards that 404, are cut mid-stream, stall, or fail once; plus
``pipe:`` commands and a generic fsspec URL (``memory://``)."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from gemdepth.data.datamodule import VideoDataModule
from gemdepth.data.remote import RemoteError, RemoteOptions, fetch
from gemdepth.data.shards import (
    ChecksumError,
    IncompleteCorpusError,
    RemoteShardError,
    ShardError,
    iter_raw_samples,
    read_clips,
    resolve_shards,
)
from gemdepth.data.synthetic import make_synthetic_corpus

pytestmark = pytest.mark.timeout(300)  # a hang fails the test instead of the whole run

SHARD = "synthetic-{:06d}.tar"


class CorpusServer:
    """``http.server`` over a folder, in a thread, with per-file faults.

    ``faults[name]`` is one of ``"404"``, ``"503"`` (always), ``"503-once"`` (first request
    only), ``"cut"`` (full Content-Length, half the body, then the connection closes) and
    ``"stall"`` (half the body, then silence until the server stops). ``hits`` counts the GET
    requests per file name.
    """

    def __init__(self, root: Path) -> None:
        self.root, self.faults, self.hits = root, {}, Counter()
        self.stopping = threading.Event()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.rstrip("/").rsplit("/", 1)[-1]
                server.hits[name] += 1
                fault = server.faults.get(name)
                if fault == "503-once" and server.hits[name] == 1 or fault == "503":
                    self.send_error(503, "busy")
                    return
                if fault == "404":
                    self.send_error(404)
                    return
                if fault in ("cut", "stall"):
                    data = (root / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    if fault == "stall":
                        server.stopping.wait(60)
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CorpusServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """A root folder with corpus ``syn`` (8 one-clip shards) served by the tests."""
    root = tmp_path_factory.mktemp("www")
    make_synthetic_corpus(root / "syn", 8, 8, 8, (48, 64), seed=0, clips_per_shard=1,
                          progress=False)
    return root


@pytest.fixture
def server(served):
    with CorpusServer(served) as srv:
        yield srv


def _dm(path: str, **kw) -> VideoDataModule:
    # a generous read timeout: a busy machine answering slowly is not a stall (the stall test sets 0.5 s)
    args = dict(batch_size=2, clip_length=4, short_side=32, sizes=[(32, 32), (32, 48)],
                num_workers=0, samples_per_epoch=16, seed=0, remote_retries=2,
                remote_backoff=0.01, remote_timeout=15.0)
    args.update(kw)
    return VideoDataModule(train_sources={"syn": {"path": path}}, **args)


def _batches(dm: VideoDataModule) -> list[tuple[list[str], torch.Tensor]]:
    return [(b["key"], b["video"]) for b in dm.train_dataloader()]


def _same(a, b) -> bool:
    return [k for k, _ in a] == [k for k, _ in b] and all(
        torch.equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))


# --------------------------------------------------------------------------- reading
def test_corpus_url_reads_like_the_local_folder(served, server) -> None:
    local = [(c["__key__"], c["rgb"].tobytes(), c["depth"].tobytes())
             for c in read_clips(served / "syn")]
    remote = [(c["__key__"], c["rgb"].tobytes(), c["depth"].tobytes())
              for c in read_clips(server.url + "/syn")]
    assert remote == local and len(local) == 8
    # the index came over HTTP too, and the shard URLs are the index's shards, in its order
    assert server.hits["index.json"] >= 1
    urls = [u for u, _ in resolve_shards(server.url + "/syn")]
    assert urls == [f"{server.url}/syn/{SHARD.format(i)}" for i in range(8)]
    # a folder of corpus folders (the server's listing), and a brace pattern of shard URLs
    assert [u for u, _ in resolve_shards(server.url + "/")] == urls
    pattern = f"{server.url}/syn/synthetic-{{000002..000004}}.tar"
    assert [u for u, _ in resolve_shards(pattern)] == urls[2:5]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_from_the_url_equals_training_from_the_folder(served, server, workers) -> None:
    local = _batches(_dm(str(served / "syn"), num_workers=workers))
    dm = _dm(server.url + "/syn", num_workers=workers)
    remote = _batches(dm)
    assert len(remote) == 8 and _same(remote, local)
    assert dm.skipped_total == 0


def test_a_404_shard_is_a_counted_skip_without_retries(served, server, caplog) -> None:
    server.faults[SHARD.format(3)] = "404"
    dm = _dm(server.url + "/syn", samples_per_epoch=40)
    with caplog.at_level(logging.WARNING):
        keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 40 and not any(k.startswith("synthetic__scene-000003") for k in keys)
    assert dm.skipped == {"syn/missing_shard": 1}  # dropped once, then never drawn again
    assert server.hits[SHARD.format(3)] == 1  # a 404 is not retried
    url = f"{server.url}/syn/{SHARD.format(3)}"
    assert any(url in r.getMessage() and "404" in r.getMessage() for r in caplog.records)


def test_a_shard_cut_mid_stream_is_retried_then_a_counted_skip(served, server, caplog) -> None:
    server.faults[SHARD.format(5)] = "cut"
    dm = _dm(server.url + "/syn", samples_per_epoch=40)
    with caplog.at_level(logging.WARNING):
        keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 40 and not any(k.startswith("synthetic__scene-000005") for k in keys)
    assert dm.skipped == {"syn/unreachable_shard": 1}
    assert server.hits[SHARD.format(5)] == 3  # first try + remote_retries=2
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{server.url}/syn/{SHARD.format(5)}" in text and "3 attempts" in text
    assert "payload" in text.lower() or "content length" in text.lower()


def test_a_server_that_stops_mid_shard_times_out_and_is_skipped_with_workers(
        served, server) -> None:
    server.faults[SHARD.format(1)] = "stall"
    dm = _dm(server.url + "/syn", num_workers=2, samples_per_epoch=40, remote_timeout=0.5,
             remote_retries=1)
    keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 40 and not any(k.startswith("synthetic__scene-000001") for k in keys)
    assert dm.skipped == {"syn/unreachable_shard": 1}  # one worker owns that shard
    assert server.hits[SHARD.format(1)] == 2


def test_an_outage_of_every_shard_mid_epoch_slows_training_but_does_not_stop_it(
        served, server, caplog) -> None:
    dm = _dm(server.url + "/syn", samples_per_epoch=60, remote_retries=1)
    loader = dm.train_dataloader()
    got = []
    with caplog.at_level(logging.WARNING):
        for i, batch in enumerate(loader):
            got += batch["key"]
            if i == 2:  # the server breaks: every shard is now cut mid-stream
                server.faults.update({SHARD.format(k): "cut" for k in range(8)})
    assert len(got) == 60  # the epoch completes (on the shard still in memory)
    assert dm.skipped["syn/unreachable_shard"] >= 8  # every shard failed, probes included
    assert set(dm.skipped) == {"syn/unreachable_shard"}
    assert "storage unreachable for all" in caplog.text
    server.faults.clear()  # storage is back: the next epoch reads every shard again
    assert len([k for b in loader for k in b["key"]]) == 60


def test_a_cache_dir_fetches_each_shard_once_and_outlives_the_server(
        served, server, tmp_path) -> None:
    cache = tmp_path / "cache"
    local = _batches(_dm(str(served / "syn"), samples_per_epoch=40))
    dm = _dm(server.url + "/syn", samples_per_epoch=40, remote_cache_dir=str(cache))
    loader = dm.train_dataloader()
    assert _same([(b["key"], b["video"]) for b in loader], local)
    drawn = {k.split("__")[1] for ks, _ in local for k in ks}  # scene i is shard i
    assert len(list(cache.iterdir())) == len(drawn)  # one copy per shard drawn
    assert all(server.hits[SHARD.format(int(s[-6:]))] == 1 for s in drawn)  # fetched once
    server.faults.update({SHARD.format(k): "404" for k in range(8)})  # the server loses them
    second = [k for b in loader for k in b["key"]]  # epoch 1: new draws, cached shards only
    assert len(second) == 40 and {k.split("__")[1] for k in second} <= drawn
    assert set(dm.skipped) <= {"syn/missing_shard"}
    copy = next(iter(cache.iterdir()))
    copy.write_bytes(b"not a tar")  # a damaged copy is noticed (sha256) and fetched again
    server.faults.clear()
    again = _dm(server.url + "/syn", samples_per_epoch=40, remote_cache_dir=str(cache))
    assert _same(_batches(again), local) and again.skipped_total == 0
    assert copy.read_bytes() != b"not a tar"


def test_a_transient_503_is_retried_and_changes_nothing(served, server) -> None:
    local = _batches(_dm(str(served / "syn")))
    server.faults[SHARD.format(0)] = "503-once"
    dm = _dm(server.url + "/syn")
    assert _same(_batches(dm), local) and dm.skipped_total == 0
    assert server.hits[SHARD.format(0)] >= 2


def test_a_changed_remote_shard_fails_its_checksum(served, server, tmp_path) -> None:
    import shutil

    copy = tmp_path / "www"
    shutil.copytree(served, copy)
    data = bytearray((copy / "syn" / SHARD.format(2)).read_bytes())
    data[2000] ^= 0xFF  # inside the first member's payload: the tar still reads
    (copy / "syn" / SHARD.format(2)).write_bytes(bytes(data))
    with CorpusServer(copy) as srv:
        url = f"{srv.url}/syn/{SHARD.format(2)}"
        with pytest.raises(ChecksumError, match="checksum mismatch"):
            list(iter_raw_samples(url, resolve_shards(url)[0][1]))
        before = srv.hits[SHARD.format(2)]
        dm = _dm(srv.url + "/syn", samples_per_epoch=40)
        keys = [k for b in dm.train_dataloader() for k in b["key"]]
        assert not any(k.startswith("synthetic__scene-000002") for k in keys)
        assert dm.skipped == {"syn/checksum_mismatch": 1}
        assert srv.hits[SHARD.format(2)] == before + 1  # a mismatch is no transient error


# --------------------------------------------------------------------------- errors
def test_fetch_backs_off_exponentially_then_names_url_and_status(server) -> None:
    server.faults["busy.tar"] = "503"
    waits: list[float] = []
    opts = RemoteOptions(retries=3, backoff=0.5, max_backoff=1.5)
    with pytest.raises(RemoteError) as err:
        fetch(f"{server.url}/syn/busy.tar", opts, sleep=waits.append)
    assert waits == [0.5, 1.0, 1.5]  # doubling, capped
    assert err.value.status == 503 and err.value.attempts == 4 and not err.value.missing
    assert f"{server.url}/syn/busy.tar" in str(err.value) and "503" in str(err.value)
    with pytest.raises(RemoteError) as err:
        fetch(f"{server.url}/syn/nothing.tar", opts, sleep=waits.append)
    assert err.value.missing and err.value.status == 404 and err.value.attempts == 1
    assert "404" in str(err.value) and len(waits) == 3


def test_unreachable_host_and_missing_index_are_clear_errors(tmp_path, server) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(RemoteShardError, match=rf"127\.0\.0\.1:{port}/c/index\.json.*2 attempts"):
        resolve_shards(f"http://127.0.0.1:{port}/c", RemoteOptions(retries=1, backoff=0.0))
    with pytest.raises(FileNotFoundError, match=r"/nothing/index\.json: not found"):
        resolve_shards(server.url + "/nothing")
    with pytest.raises(IncompleteCorpusError, match=r"elsewhere/index\.json: not found"):
        resolve_shards(f"{server.url}/elsewhere/x-000000.tar")  # shards need their index
    with pytest.raises(ShardError, match=r"nothing-000000\.tar: not listed in .*syn/index\.json"):
        resolve_shards(f"{server.url}/syn/nothing-000000.tar")


def test_an_incomplete_remote_index_is_refused(tmp_path) -> None:
    import json

    make_synthetic_corpus(tmp_path / "c", 1, 4, 4, (24, 32), seed=0, progress=False)
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    index["complete"] = False
    (tmp_path / "c" / "index.json").write_text(json.dumps(index))
    with CorpusServer(tmp_path) as srv, pytest.raises(IncompleteCorpusError, match="incomplete"):
        resolve_shards(srv.url + "/c")


# --------------------------------------------------------------------------- other openers
def test_pipe_commands_read_like_the_folder(served) -> None:
    local = [c["__key__"] for c in read_clips(served / "syn")]
    template = f"pipe:cat {served / 'syn'}/{{name}}"
    assert [c["__key__"] for c in read_clips(template)] == local
    one = f"pipe:cat {served / 'syn' / SHARD.format(4)}"  # index: the same command, index.json
    assert [c["__key__"] for c in read_clips(one)] == local[4:5]
    failing = f"pipe:cat {served / 'syn'}/{{name}} && false"
    pairs = resolve_shards(template)
    with pytest.raises(RemoteShardError, match=r"exited with status 1.*2 attempts"):
        list(iter_raw_samples(failing.replace("{name}", SHARD.format(0)), pairs[0][1],
                              remote=RemoteOptions(retries=1, backoff=0.0)))


def test_a_stalled_pipe_times_out(served) -> None:
    opts = RemoteOptions(retries=0, timeout=0.3)
    with pytest.raises(RemoteError, match="no output for 0.3 s"):
        fetch(f"pipe:head -c 100 {served / 'syn' / SHARD.format(0)}; sleep 30", opts)


def test_generic_fsspec_urls(served) -> None:
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    for f in sorted((served / "syn").iterdir()):
        mem.pipe(f"/gemdepth-test/syn/{f.name}", f.read_bytes())
    try:
        local = _batches(_dm(str(served / "syn")))
        assert _same(_batches(_dm("memory://gemdepth-test/syn")), local)
        dm = _dm("memory://gemdepth-test/syn")
        mem.rm(f"/gemdepth-test/syn/{SHARD.format(6)}")
        keys = [k for b in dm.train_dataloader() for k in b["key"]]
        assert not any(k.startswith("synthetic__scene-000006") for k in keys)
        assert dm.skipped == {"syn/missing_shard": 1}
    finally:
        mem.rm("/gemdepth-test", recursive=True)
