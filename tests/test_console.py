"""What a user sees: `debug=limit` and `debug=fdr` as quick runs, a console without library chatter, the
result tables alone on stdout, and a `--help` that lists the groups a user selects without loading torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.commands import REPO, output, run_command, train_py
from tests.conftest import TINY

# lines a run printed before (issue 23) that say nothing about the run
NOISE = (
    "Tip:",
    "litlogger",
    "LeafSpec",
    "Trainer already configured with model summary callbacks",
    "to estimate number of stepping batches",
    "was configured so 100%",
    "FLOPs",
    "Total Flops",
    "Directory watcher advancing",
    "setup plugin alembic",
)
# what a tqdm bar writes: a carriage return, a rate, a bar's description
PROGRESS = ("\r", "it/s]", "Epoch 0:", "Validation DataLoader", "Testing DataLoader")
BARS_ON = "callbacks.progress_bar.refresh_rate=1"  # the tiny settings turn bars off; a user has them on


def assert_quiet(result: subprocess.CompletedProcess) -> None:
    """The command succeeded, printed no noise line, and its stdout holds no progress-bar text."""
    assert result.returncode == 0, output(result)[-3000:]
    noisy = [line for line in output(result).splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "noise on the console:\n" + "\n".join(noisy)
    bars = [p for p in PROGRESS if p in result.stdout]
    assert not bars, f"progress-bar text {bars} on stdout:\n{result.stdout[-2000:]}"


def only_run(root: Path, stage: str) -> Path:
    runs = [d for d in (root / stage).iterdir() if d.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python train.py debug=limit` on the tiny world (9 train batches of 16 frames), at the default
    max_epochs (4): its root and result."""
    root = tmp_path_factory.mktemp("limit")
    sizes = [o for o in TINY if not o.startswith("trainer.max_epochs=")]
    return root, train_py(root, *sizes, "debug=limit", BARS_ON, tiny=False)


def test_debug_limit_trains_one_epoch_of_a_few_batches_and_saves_the_run(limited) -> None:
    root, result = limited
    assert result.returncode == 0, output(result)[-3000:]
    run = only_run(root, "pretrain_ae")
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, 4)  # one epoch of 4 of the 9 batches
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best.ckpt").is_file()


def test_a_tiny_run_prints_no_noise_and_only_results_on_stdout(limited) -> None:
    root, result = limited
    assert_quiet(result)
    run = only_run(root, "pretrain_ae")
    title = next(line for line in result.stdout.splitlines() if "test split" in line)
    assert str(run) in title  # the table's title keeps the run's path on one line
    assert "L1" in result.stdout and "Seed set to" not in result.stdout  # tables on stdout, logs on stderr
    assert "Epoch 0:" in result.stderr  # the bars are there, on stderr


def test_evaluate_prints_no_noise_and_only_results_on_stdout(limited, tmp_path: Path) -> None:
    root, _ = limited
    result = train_py(tmp_path, f"ckpt_path={only_run(root, 'pretrain_ae')}", f"paths.cache={root / 'cache'}",
                      BARS_ON, stage="evaluate")
    assert_quiet(result)
    assert (only_run(tmp_path, "evaluate") / "curves").is_dir()  # it read the run's TensorBoard events


def test_debug_fdr_saves_nothing(limited, tmp_path: Path) -> None:
    root, _ = limited
    result = train_py(tmp_path, "debug=fdr", f"paths.cache={root / 'cache'}", BARS_ON)
    assert_quiet(result)
    assert "test split" in result.stdout  # it ran the test batch and printed its table
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "debug=fdr left files behind"


def test_help_lists_the_groups_a_user_selects() -> None:
    result = run_command([sys.executable, str(REPO / "train.py"), "--help"])
    assert result.returncode == 0, output(result)
    groups = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "debug: fdr, limit, overfit" in groups and "stage: evaluate, multimodal, predict, pretrain_ae" in groups
    assert "model/story/latent_head: mlp, residual_cnn" in groups
    for hidden in ("_common", "recipe", "ablation", "hydra/"):
        assert hidden not in groups, f"--help lists {hidden}"


def test_composing_a_config_loads_neither_torch_nor_lightning() -> None:
    """`--cfg job` (and so `--help` and tab completion, which compose the same way) never import them."""
    script = ("import runpy, sys\n"
              f"sys.argv = [{str(REPO / 'train.py')!r}, '--cfg', 'job', 'stage=multimodal']\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning'}))\n")
    result = run_command([sys.executable, "-c", script])
    assert result.returncode == 0, output(result)
    assert result.stdout.splitlines()[-1] == "[]", result.stdout[-500:]


def test_an_optuna_search_prints_no_noise(limited, tmp_path: Path) -> None:
    root, _ = limited
    result = train_py(tmp_path, "-m", "hparams_search=optuna_ae", "hydra.sweeper.n_trials=1", "debug=limit",
                      f"paths.cache={root / 'cache'}", BARS_ON)
    assert_quiet(result)
    assert "[HYDRA] Launching 1 jobs" in result.stderr  # Hydra's own lines are logs: stderr
