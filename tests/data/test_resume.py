"""Exact mid-epoch resume: the training stream's position goes into the checkpoint, and an
interrupted-and-resumed run sees exactly the batches of an uninterrupted one (2 workers)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from gemdepth.data.datamodule import VideoDataModule
from gemdepth.data.shards import iter_raw_samples
from gemdepth.data.synthetic import make_synthetic_corpus
from gemdepth.training.callbacks import SigtermCheckpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    """Two sources; ``b`` has a changed shard (a checksum skip in the position's bad list)."""
    from shard_helpers import replace_member

    root = tmp_path_factory.mktemp("resume")
    make_synthetic_corpus(root / "a", 6, 8, 8, (48, 64), seed=0, clips_per_shard=2,
                          progress=False)
    make_synthetic_corpus(root / "b", 4, 8, 8, (48, 64), seed=1, clips_per_shard=1,
                          progress=False)
    shard = root / "b" / "synthetic-000001.tar"
    key = next(iter_raw_samples(shard))["__key__"]
    buf = io.BytesIO()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(buf, format="JPEG", quality=95)
    replace_member(shard, f"{key}.rgb.0000.jpg", buf.getvalue())
    return root


def _dm(root: Path, workers: int, **kw) -> VideoDataModule:
    args = dict(batch_size=2, clip_length=4, short_side=32, sizes=[(32, 32), (32, 48)],
                num_workers=workers, samples_per_epoch=22, seed=3, shuffle_buffer=4,
                hflip_prob=0.5, stride_range=(1, 2))
    args.update(kw)
    return VideoDataModule(train_sources={"a": str(root / "a"),
                                          "b": {"path": str(root / "b"), "weight": 0.5}}, **args)


def _sig(batch: dict) -> tuple:
    """What identifies a batch: keys, crop shape and the pixels (crop, stride, flip)."""
    return tuple(batch["key"]), tuple(batch["video"].shape), batch["video"].double().sum().item()


def _roundtrip(state: dict) -> dict:
    """``state`` through torch.save / a ``weights_only`` load, as in a checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_state_continues_the_stream_exactly(corpora, workers) -> None:
    full = _dm(corpora, workers).train_dataloader()
    expected = [_sig(b) for b in full] + [_sig(b) for b in full]  # two epochs of 11 batches
    assert len(expected) == 22 and len(set(expected)) > 15
    for cut in (1, 2, 5, 10, 11, 12, 16):  # inside epoch 0, at its end, inside epoch 1
        dm = _dm(corpora, workers)
        loader = dm.train_dataloader()
        it = iter(loader)
        seen = [_sig(next(it)) for _ in range(min(cut, 11))]
        if cut > 11:
            list(it)  # the rest of epoch 0 (not recorded: it is in `expected` already)
            it = iter(loader)
            seen += expected[len(seen):11] + [_sig(next(it)) for _ in range(cut - 11)]
        state, dm_state = _roundtrip(loader.state_dict()), dm.state_dict()
        del it  # the interrupted run goes away, workers included
        again = _dm(corpora, workers)
        again.load_state_dict(dm_state)
        resumed = again.train_dataloader()
        resumed.load_state_dict(state)
        seen += [_sig(b) for b in resumed]
        if len(seen) < 22:
            seen += [_sig(b) for b in resumed]
        assert seen[:22] == expected, f"cut after {cut} batches"
        assert again.skipped.get("b/checksum_mismatch", 0) <= 2


def test_position_records_the_workers_and_the_shuffle_buffer(corpora) -> None:
    loader = _dm(corpora, 2).train_dataloader()
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    (rank,) = state["ranks"]
    assert (rank["epoch"], rank["batches"], rank["num_workers"]) == (0, 3, 2)
    w0, w1 = rank["workers"]
    assert (w0["worker"], w0["done"], w1["worker"], w1["done"]) == (0, 2, 1, 1)  # round robin
    for src in w0["sources"]:
        assert set(src) >= {"rng", "shard", "offset", "buffer", "bad"}
        assert all(isinstance(s, str) and isinstance(i, int) for s, i in src["buffer"])
    del it


def test_another_worker_count_warns_and_starts_the_next_epoch(corpora, caplog) -> None:
    loader = _dm(corpora, 2).train_dataloader()
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    other = _dm(corpora, 0).train_dataloader()
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(state)
    assert "cannot continue exactly" in caplog.text and "epoch 1 starts afresh" in caplog.text
    epoch1 = _dm(corpora, 0).train_dataloader()
    epoch1.epoch = 1
    assert [_sig(b) for b in other] == [_sig(b) for b in epoch1]


# --------------------------------------------------------------------------- with Lightning
class Tiny(pl.LightningModule):
    """One weight: training costs nothing, the loop and checkpoints are Lightning's own."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return (self.w * batch["video"].mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class KeyRecorder(pl.Callback):
    """Appends ``{"step", "keys"}`` of every training batch to ``path`` (a JSON-lines file);
    with ``sigterm_at`` it sends itself SIGTERM after that global step."""

    def __init__(self, path: str, sigterm_at: int | None = None) -> None:
        self.path, self.sigterm_at = Path(path), sigterm_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": trainer.global_step, "keys": list(batch["key"])}) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.sigterm_at is not None and trainer.global_step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)


def _keys(path: Path, before: int | None = None) -> list[list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["keys"] for r in rows if before is None or r["step"] < before]


def _trainer(root: Path, recorder: KeyRecorder, steps: int) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False,
                      num_sanity_val_steps=0, default_root_dir=str(root),
                      callbacks=[recorder, SigtermCheckpoint()])


def test_sigterm_then_resume_sees_the_uninterrupted_samples(corpora, tmp_path) -> None:
    steps = 26  # 11 batches per epoch: the stop falls inside epoch 0, the run ends in epoch 2
    _trainer(tmp_path / "full", KeyRecorder(tmp_path / "full.jsonl"), steps).fit(
        Tiny(), _dm(corpora, 2))
    expected = _keys(tmp_path / "full.jsonl")
    assert len(expected) == steps

    cut = tmp_path / "cut"
    with pytest.raises(SIGTERMException):  # raised after the batch; last.ckpt saved first
        _trainer(cut, KeyRecorder(tmp_path / "cut.jsonl", sigterm_at=5), steps).fit(
            Tiny(), _dm(corpora, 2))
    ckpt = torch.load(cut / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5
    (position,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position["ranks"][0]["batches"] == 5

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(cut, KeyRecorder(tmp_path / "resumed.jsonl"), steps).fit(
            Tiny(), _dm(corpora, 2), ckpt_path=str(cut / "last.ckpt"))
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert _keys(tmp_path / "cut.jsonl", before=5) + _keys(tmp_path / "resumed.jsonl") == expected


# --------------------------------------------------------------------------- the CLI, killed
def _tiny_cli_config(run: Path, corpora: Path, keys: Path, steps: int) -> dict:
    """``gemdepth fit`` on the tiny model: 2 workers, last.ckpt after every step."""
    sys.path.insert(0, str(REPO / "tests" / "training"))
    try:
        from training_helpers import tiny_model
    finally:
        sys.path.pop(0)
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": steps,
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(run),
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True,
                               "save_top_k": 0, "every_n_train_steps": 1}},
                {"class_path": "test_resume.KeyRecorder", "init_args": {"path": str(keys)}}],
        },
        "model": {"model": tiny_model(), "init_weights": None, "warmup_steps": 1,
                  "image_log_interval": 1000},
        "data": {
            "train_sources": {"a": {"path": str(corpora / "a")}},
            "batch_size": 2, "clip_length": 4, "short_side": 28, "sizes": [[28, 28]],
            "num_workers": 2, "samples_per_epoch": 12, "seed": 5, "normalize": "device",
        },
    }


def _fit(config: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "gemdepth", "fit", "-c", str(config), *extra],
                            cwd=config.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_cli_killed_mid_epoch_resumes_with_the_same_samples(corpora, tmp_path) -> None:
    """``gemdepth fit`` killed with SIGKILL (no handler runs) mid-epoch, then
    ``--ckpt_path last``: its batches after the last checkpoint equal the uninterrupted run's."""
    steps = 9  # 6 batches per epoch
    full_keys, cut_keys, res_keys = (tmp_path / f"{n}.jsonl" for n in ("full", "cut", "res"))
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump(_tiny_cli_config(tmp_path / "full", corpora, full_keys, steps)))
    proc = _fit(full)
    out = proc.communicate(timeout=400)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    expected = _keys(full_keys)
    assert len(expected) == steps

    cfg = _tiny_cli_config(tmp_path / "cut", corpora, cut_keys, steps)
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(cfg))
    proc = _fit(tmp_path / "cut.yaml")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if cut_keys.is_file() and len(cut_keys.read_text().splitlines()) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.kill()  # SIGKILL: nothing is saved on the way out
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 1 <= saved < steps

    cfg["trainer"]["callbacks"][1]["init_args"]["path"] = str(res_keys)
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(cfg))
    proc = _fit(tmp_path / "cut.yaml", "--ckpt_path", "last")
    out = proc.communicate(timeout=400)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    assert "not resumable" not in out
    assert _keys(cut_keys, before=saved) + _keys(res_keys) == expected


def test_a_url_corpus_resumes_exactly_too(corpora) -> None:
    """The position names shard URLs; resuming fetches the buffered ones again over HTTP."""
    from test_remote import CorpusServer

    with CorpusServer(corpora) as srv:
        def dm() -> VideoDataModule:
            return VideoDataModule(train_sources={"a": srv.url + "/a"}, batch_size=2,
                                   clip_length=4, short_side=32, sizes=[(32, 32)],
                                   num_workers=2, samples_per_epoch=16, seed=7)

        expected = [_sig(b) for b in dm().train_dataloader()]
        loader = dm().train_dataloader()
        it = iter(loader)
        seen = [_sig(next(it)) for _ in range(3)]
        state = _roundtrip(loader.state_dict())
        del it
        assert all(s.startswith(srv.url) for w in state["ranks"][0]["workers"] if w
                   for src in w["sources"] for s, _ in src["buffer"])
        resumed = dm().train_dataloader()
        resumed.load_state_dict(state)
        assert seen + [_sig(b) for b in resumed] == expected


_DDP_SCRIPT = '''
import sys
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from test_resume import KeyRecorder, Tiny
from gemdepth.data.datamodule import VideoDataModule
from pathlib import Path

corpora, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
ckpt = sys.argv[4] if len(sys.argv) > 4 else None
rank_keys = KeyRecorder(str(out / "keys.jsonl"))
trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=2, strategy="ddp",
                     logger=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, default_root_dir=str(out),
                     callbacks=[rank_keys, ModelCheckpoint(dirpath=str(out), save_last=True,
                                                           save_top_k=0, every_n_train_steps=1)])
data = VideoDataModule(train_sources={"a": str(corpora / "a")}, batch_size=2, clip_length=4,
                       short_side=32, sizes=[[32, 32], [32, 48]], num_workers=2,
                       samples_per_epoch=24, seed=3, shuffle_buffer=4)
trainer.fit(Tiny(), data, ckpt_path=ckpt)
'''


class RankKeyRecorder(KeyRecorder):
    """:class:`KeyRecorder` writing one file per rank (``<path>.<rank>``)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(f"{self.path}.{trainer.global_rank}", "a") as fh:
            fh.write(json.dumps({"step": trainer.global_step, "keys": list(batch["key"])}) + "\n")


@pytest.mark.slow
def test_two_ranks_each_resume_their_own_stream(corpora, tmp_path) -> None:
    """2-process DDP (gloo) × 2 workers: rank 0's checkpoint holds both ranks' positions, and
    each rank continues its own stream exactly."""
    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_SCRIPT.replace("KeyRecorder(", "RankKeyRecorder(")
                      .replace("import KeyRecorder,", "import RankKeyRecorder,"))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]))

    def run(out: Path, steps: int, *ckpt: str) -> None:
        out.mkdir(exist_ok=True)
        res = subprocess.run([sys.executable, str(script), str(corpora), str(out), str(steps),
                              *ckpt], env=env, capture_output=True, text=True, timeout=400)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        assert "not resumable" not in res.stdout + res.stderr

    run(tmp_path / "full", 9)  # source a only: 24 clips / (2 × 2 ranks): 6 batches per rank
    run(tmp_path / "cut", 4)
    saved = torch.load(tmp_path / "cut" / "last.ckpt", map_location="cpu", weights_only=True)
    (position,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert [(r["rank"], r["batches"]) for r in position["ranks"]] == [(0, 4), (1, 4)]
    run(tmp_path / "cut", 9, str(tmp_path / "cut" / "last.ckpt"))
    for rank in (0, 1):
        full = _keys(tmp_path / "full" / f"keys.jsonl.{rank}")
        assert len(full) == 9
        assert _keys(tmp_path / "cut" / f"keys.jsonl.{rank}") == full, f"rank {rank}"
    assert _keys(tmp_path / "full" / "keys.jsonl.0") != _keys(tmp_path / "full" / "keys.jsonl.1")
