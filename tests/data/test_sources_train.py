"""Both stages train through the real Hydra config on each file-based source, from tiny real-format files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tests.conftest as shared
from storyreason.run import train
from tests.conftest import compose_config, read_metrics
from tests.data.conftest import encode_image, write_snapshot, write_story_folder

# the shared tiny overrides size the built-in world (data.source.num_stories, ...), which these sources lack
TINY_WITHOUT_WORLD = [o for o in shared.TINY if not o.startswith("data.source.")]


@pytest.mark.parametrize("data", ["storyreasoning", "folder"])
def test_both_stages_train_on_the_source(data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "TINY", TINY_WITHOUT_WORLD)
    if data == "storyreasoning":
        path = write_snapshot(tmp_path / "snapshot", train=8, test=2)
        extra = ["data.source.val_fraction=0.25", f"data.source.hf_cache_dir={tmp_path / 'hf'}"]
    else:
        path = write_story_folder(tmp_path / "stories", stories=10)
        (path / "images" / "story7" / "frame2.jpg").write_bytes(encode_image((40, 30), (0, 0, 0))[:100])
        extra = ["data.skip_bad=true"]
    overrides = [f"data={data}", f"data.path={path}", "data.source.decode_workers=1", *extra]
    root = tmp_path / "runs"
    ae = compose_config(root, "pretrain_ae", overrides)
    train(ae)
    story = compose_config(root, "multimodal", overrides)
    train(story)
    assert "test/l1" in read_metrics(ae) and "test/loss" in read_metrics(story)
    assert not [k for k in read_metrics(story) if "oracle" in k], "only the built-in world knows its oracle"
    assert len(list((root / "cache").iterdir())) == 1  # stage 2 reused stage 1's cache entry
    if data == "folder":
        for cfg in (ae, story):
            skipped = json.loads((Path(cfg.paths.output_dir) / "skipped_stories.json").read_text())
            assert [entry["story_id"] for entries in skipped.values() for entry in entries] == ["story7"]


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning: 15-25 s here
def test_bad_input_stops_train_py_with_a_clear_error(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(repo / "train.py"), "data=folder", f"data.path={tmp_path / 'nowhere'}", f"paths.root={tmp_path}"],
        capture_output=True, text=True, cwd=repo, timeout=120,
    )
    assert result.returncode != 0
    assert f"DataError: data.path {tmp_path / 'nowhere'} does not exist" in result.stderr
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
