"""Entry point: `python train.py stage=pretrain_ae` then `python train.py stage=multimodal`."""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

import storyreason.resume  # noqa: F401  (registers the run_dir and hydra_subdir resolvers of conf/hydra/)
from storyreason.config import check_group_choices, groups_help, null_groups_removed
from storyreason.errors import ConfigError, user_error
from storyreason.rundir import discard_unstarted_run

log = logging.getLogger("storyreason")
CONF = Path(__file__).resolve().parent / "conf"
FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"
# `--help` lists the groups a user selects (conf/hydra/default.yaml's help template)
OmegaConf.register_new_resolver("groups_help", lambda: groups_help(CONF), replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # torch and Lightning load here, once a stage runs: `--help`, `--cfg` and tab completion never need them
    from storyreason.console import quiet_libraries
    from storyreason.run import run
    from storyreason.sweeps import record_job

    quiet_libraries()
    try:
        value = record_job(run, cfg)  # in a sweep (-m) a failing job is recorded and the sweep goes on
        if OmegaConf.select(cfg, "trainer.fast_dev_run"):  # debug=fdr saves nothing: its run directory goes too
            discard_unstarted_run(cfg)
        return value
    except BaseException as err:
        ours = None if FULL_ERROR else user_error(err)
        if ours is not None:  # our config, data and checkpoint errors: one line, no traceback
            log.error("%s: %s", type(ours).__name__, ours)
        discard_unstarted_run(cfg)  # a failure before the first step leaves no run directory
        if ours is None:  # a bug, in our code or a library's: its traceback is the message
            raise
        sys.exit(2)


if __name__ == "__main__":
    try:
        check_group_choices(sys.argv[1:], CONF)  # before Hydra: its own error is several lines and exit 1
    except ConfigError as err:
        print(f"ConfigError: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = null_groups_removed(sys.argv[1:], CONF)
    try:
        main()
    except SystemExit as done:  # Hydra reports a config it cannot compose, then exits 1: config errors exit 2
        if done.code == 1 and isinstance(done.__context__, CompactHydraException):
            sys.exit(2)
        raise
