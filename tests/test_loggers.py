"""logger=wandb (offline) and logger=mlflow (a local file store): a real tiny stage-2 run, as a user starts
it, puts its metrics, hyperparameters, sample grids and captions into each, read back from the files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from PIL import Image

from tests.commands import metrics, output, train_py

pytest.importorskip("wandb", reason="the [wandb] extra (in [dev])")
pytest.importorskip("mlflow", reason="the [mlflow] extra (in [dev])")


def tiny_story_run(ae_run: Path, root: Path, logger: str) -> Path:
    """A finished tiny stage-2 run with `logger=...`; its run directory."""
    ae_ckpt = ae_run / "pretrain_ae" / "run" / "checkpoints" / "best.ckpt"
    result = train_py(root, f"logger={logger}", f"model.ae_ckpt={ae_ckpt}", stage="multimodal")
    assert result.returncode == 0, output(result)[-3000:]
    (run,) = [m.parent for m in root.glob("multimodal/*/metrics.json")]
    return run


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's .wandb file: a LevelDB-style log of 32 KiB blocks after a
    7-byte file header, each chunk a 7-byte header (crc32, length, kind: 1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, parts, records = path.read_bytes(), 32768, 7, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # too little room for a chunk header: the block is padded
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the block's end
            pos += left
            continue
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def test_wandb_offline_keeps_metrics_hparams_and_samples(ae_run: Path, tmp_path: Path) -> None:
    run = tiny_story_run(ae_run, tmp_path, "wandb")
    (offline,) = run.glob("wandb/offline-run-*")
    records = wandb_records(next(offline.glob("run-*.wandb")))
    history: dict[str, list[str]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                history.setdefault(item.key or "/".join(item.nested_key), []).append(item.value_json)
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for item in r.config.update}
    found = metrics(run)
    assert float(history["test/image_l1"][-1]) == pytest.approx(found["test/image_l1"])
    assert float(history["val/gen_token_acc"][-1]) == pytest.approx(found["val/gen_token_acc"])
    assert config["model.lr"] == pytest.approx(0.004) and config["stage.name"] == "multimodal"
    assert "val/samples/filenames" in history and "val/captions/_type" in history
    grids = list(offline.glob("files/media/images/val/samples_*.png"))
    assert grids and Image.open(grids[0]).size[0] > 64 * 5  # context | target | prediction, side by side


def test_mlflow_file_store_keeps_metrics_hparams_and_samples(ae_run: Path, tmp_path: Path) -> None:
    run = tiny_story_run(ae_run, tmp_path, "mlflow")
    (store,) = [m.parent for m in (tmp_path / "mlruns").glob("*/*/meta.yaml")]
    found = metrics(run)
    last = float((store / "metrics" / "test" / "image_l1").read_text().split()[1])
    assert last == pytest.approx(found["test/image_l1"])
    assert (store / "params" / "model.lr").read_text() == "0.004"
    assert (store / "params" / "stage.name").read_text() == "multimodal"
    grids = sorted((store / "artifacts" / "val" / "samples").glob("step_*.png"))
    assert grids and Image.open(grids[0]).size[0] > 64 * 5
    captions = sorted((store / "artifacts" / "val" / "captions").glob("step_*.txt"))
    assert captions and captions[0].read_text().startswith("reference: ")
    assert "\ngenerated: " in captions[0].read_text()


def test_tensorboard_keeps_the_samples_and_captions(story_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(story_run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert "val/samples" in events.Tags()["images"]
    assert any(tag.startswith("val/captions") for tag in events.Tags()["tensors"])
