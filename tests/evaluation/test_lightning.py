"""The Lightning hooks: Trainer.test on an EvalDataModule built from configs/eval, result files,
logged metrics, and a 2-process DDP run equal to the single-process one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger

from eval_helpers import OracleModel, plane_sequence, write_sequences
from gemdepth.evaluation.lightning import (
    BenchmarkRun,
    is_sequence_batch,
    sequence_test_epoch_end,
    sequence_test_step,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--data.init_args.window", "8", "--data.init_args.overlap", "4", "--data.init_args.interp", "2",
         "--data.init_args.num_workers", "0"]


class SequenceTask(LightningModule):
    """A stand-in for GemDepthTask with exactly the integration lines the task needs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.result = None

    def test_step(self, batch, batch_idx):
        if is_sequence_batch(batch):
            return sequence_test_step(self, batch, batch_idx)
        raise AssertionError("only whole-sequence batches in this test")

    def on_test_epoch_end(self) -> None:
        self.result = sequence_test_epoch_end(self)


def _datamodule(config: str, extra: list[str]):
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action="config")
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    cfg = parser.parse_args(["--config", str(REPO / "configs" / "eval" / config), *extra])
    return parser.instantiate_classes(cfg).data


@pytest.fixture
def bonn_corpus(tmp_path):
    return write_sequences(tmp_path / "bonn", "bonn",
                           {f"rgbd_bonn_{n}": plane_sequence(12, 28, 42, seed=i) for i, n in enumerate("abc")})


def test_trainer_test_runs_the_benchmark_and_writes_results(tmp_path, bonn_corpus, capsys) -> None:
    dm = _datamodule("bonn_500.yaml", ["--data.init_args.path", str(bonn_corpus), "--data.init_args.input_size", "28",
                                       "--data.init_args.lengths", "[8, null]", *SMALL])
    task = SequenceTask(OracleModel())
    trainer = Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path / "logs"), enable_progress_bar=False,
                      enable_model_summary=False)
    logged = trainer.test(task, datamodule=dm, verbose=False)[0]
    result = task.result
    assert [r["label"] for r in result["rows"]] == ["model · 8 frames", "model"]
    full = result["rows"][1]
    assert full["sequences_evaluated"] == 3 and full["short_sequences"] == 3  # 12 of 500 frames
    assert full["metrics"]["AbsRel"] < 0.01 and full["metrics"]["Delta1"] == 1.0
    assert logged["test/bonn_500/AbsRel"] == pytest.approx(full["metrics"]["AbsRel"])
    assert "test/bonn_500/len8/Delta1" in logged
    out_dir = Path(trainer.log_dir)
    data = json.loads((out_dir / "eval_bonn_500.json").read_text())
    assert data["protocol"]["name"] == "bonn_500" and data["protocol"]["max_depth"] == 10.0
    assert {s["name"] for s in data["rows"][1]["sequences"]} == {"rgbd_bonn_a", "rgbd_bonn_b", "rgbd_bonn_c"}
    assert (out_dir / "eval_bonn_500.csv").read_text().splitlines()[0] == "Method,bonn_500 AbsRel,bonn_500 delta1"
    assert "bonn_500 AbsRel↓" in capsys.readouterr().out


def test_epoch_end_is_a_no_op_for_other_datamodules() -> None:
    class Plain(LightningModule):
        pass

    task = Plain()
    assert sequence_test_epoch_end(task) is None  # no trainer, no benchmark
    assert not is_sequence_batch({"video": torch.zeros(1), "rgb": 1, "gt_box": 1})


def _ddp_worker(rank: int, world: int, init: str, corpus: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        from gemdepth.evaluation import get_protocol, prepare_sequence
        from gemdepth.data import read_sequences
        from gemdepth.evaluation.runner import analysis_settings

        proto = get_protocol("bonn", sampling={"start": 0, "stop": None, "max_frames": None},
                             inference={"input_size": 28, "window": 8, "overlap": 4, "interp": 2})
        run = BenchmarkRun(proto, analysis_settings(), method="oracle", device="cpu")
        model = OracleModel().eval()
        for i, seq in enumerate(read_sequences(corpus)):
            if i % world == rank:
                run.update(model, prepare_sequence(seq, proto))
        result = run.compute()
        if rank == 0:
            Path(out).write_text(json.dumps(result["rows"][0]))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_results_equal_single_process(tmp_path, bonn_corpus) -> None:
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'ddp_init'}"
    out = tmp_path / "ddp.json"
    mp.start_processes(_ddp_worker, args=(2, init, str(bonn_corpus), str(out)), nprocs=2, join=True,
                       start_method="fork")  # fork: no re-import of torch in the children
    ddp = json.loads(out.read_text())
    single_out = tmp_path / "single.json"
    _ddp_worker(0, 1, f"file://{tmp_path / 'single_init'}", str(bonn_corpus), str(single_out))
    single = json.loads(single_out.read_text())
    assert ddp["sequences_evaluated"] == single["sequences_evaluated"] == 3
    assert [s["name"] for s in ddp["sequences"]] == sorted(s["name"] for s in single["sequences"])
    for key in ("AbsRel", "Delta1"):
        assert ddp["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-12)
