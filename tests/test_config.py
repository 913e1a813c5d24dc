"""The typed config: every known key given a value of the wrong type is refused in one line naming it."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from storyreason.config import SCHEMA, ConfigError, leaves, check_types, rule_for, validate
from tests.commands import output, train_py
from tests.conftest import CONF

BASES = [(stage, data) for stage in ("pretrain_ae", "multimodal", "evaluate", "predict")
         for data in ("synthetic", "prose", "folder", "storyreasoning")]


@pytest.fixture(scope="module")
def composed() -> dict[tuple[str, str], OmegaConf]:
    """The real config of every stage and data source, composed as train.py composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return {(s, d): compose(config_name="config", overrides=[f"stage={s}", f"data={d}"]) for s, d in BASES}


def test_the_shipped_configs_pass(composed: dict) -> None:
    for cfg in composed.values():
        check_types(cfg)


def _wrong_values(key: str) -> list:
    """Values of the wrong type for `key`: text, and for integer keys a float and a boolean too."""
    rule = rule_for(key)
    values = [v for v in ("abc", [1, 2], {"a": 1}) if not rule.test(v)][:1]
    if rule.text.startswith("an integer"):
        values += [1.5, True]
    return values


def test_every_known_key_refuses_a_wrong_type_naming_the_key(composed: dict) -> None:
    checked = set()
    for cfg in composed.values():
        for key, raw in leaves(OmegaConf.to_container(cfg, resolve=False)).items():
            if rule_for(key) is None or raw == "???" or key in checked:
                continue
            checked.add(key)
            for wrong in _wrong_values(key):
                bad = cfg.copy()
                OmegaConf.update(bad, key, wrong, merge=False)
                with pytest.raises(ConfigError) as err:
                    check_types(bad)
                message = str(err.value)
                assert message.startswith(f"{key}=") and "expected" in message and "\n" not in message, message
    assert len(checked) > 80, sorted(checked)  # the shipped configs' keys, checked against the schema
    patterns = {p for p in SCHEMA if "*" not in p}
    assert patterns - checked <= {"data.tokenizer", "data.lowercase", "data.vocab_min_count", "data.vocab_max_size",
                                  "data.caption_coverage", "ckpt_path", "predict.input",
                                  "model.story.caption_memory.context_bias"}, patterns - checked  # pointer's only


@pytest.mark.parametrize("override, message", [
    ("seed=abc", "seed=abc (a string): expected an integer"),
    ("seed=1.5", "seed=1.5 (a float): expected an integer"),
    ("data.batch_size=abc", "data.batch_size=abc (a string): expected an integer >= 1"),
    ("model.lr=abc", "model.lr=abc (a string): expected a number > 0"),
    ("data.context=abc", "data.context=abc (a string): expected an integer >= 1"),
    ("data.max_caption_len=many", "data.max_caption_len=many (a string): expected an integer >= 2 or one of auto"),
    ("trainer.max_epochs=2.5", "trainer.max_epochs=2.5 (a float): expected an integer >= -1 or null"),
])
def test_command_line_values_are_typed_when_composed(override: str, message: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["stage=multimodal", override])
    with pytest.raises(ConfigError) as err:
        check_types(cfg)
    assert str(err.value) == message


@pytest.mark.parametrize("overrides, message", [
    (["model.story.motion_cells=true", "model/story/latent_head=mlp"],
     "model.story.motion_cells=true reads the residual_cnn latent head's hidden map, not MLPLatentHead's"),
    (["model.story.motion_cells=true", "model/story/caption_memory=none"],
     "model.story.motion_cells=true needs a caption decoder that reads the map cells"),
    (["model.story.bidirectional=true", "model.story.text_dim=15"],
     "model.story.bidirectional=true splits model.story.text_dim=15 between two directions"),
])
def test_story_options_that_need_one_another_are_refused_naming_them(overrides: list[str], message: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["stage=multimodal", *overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(message)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):  # the option alone is fine
        validate(compose(config_name="config", overrides=["stage=multimodal", overrides[0]]))


def test_the_other_engineers_data_keys_are_accepted() -> None:
    cfg = OmegaConf.create({"data": {"tokenizer": "bpe", "lowercase": True, "vocab_min_count": 2,
                                     "vocab_max_size": None, "max_caption_len": "auto", "caption_coverage": 0.95}})
    check_types(cfg)
    for key, wrong in [("tokenizer", "chars"), ("vocab_min_count", 0), ("caption_coverage", 0.0), ("lowercase", "yes")]:
        bad = cfg.copy()
        bad.data[key] = wrong
        with pytest.raises(ConfigError, match=rf"^data\.{key}="):
            check_types(bad)


def test_every_trainer_flag_is_settable_without_plus() -> None:
    listed = set(OmegaConf.load(Path(CONF) / "trainer" / "cpu.yaml"))
    flags = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    assert flags - listed == set(), "add these Trainer flags to conf/trainer/cpu.yaml at their defaults"


def test_a_group_option_that_does_not_exist_lists_the_choices() -> None:
    """Checked on the command line before Hydra composes (train.py's wiring: the test below)."""
    from storyreason.config import check_group_choices

    for override, choices in (("stage=foo", "evaluate, multimodal, predict, pretrain_ae (conf/stage/)"),
                              ("data=foo", "folder, prose, storyreasoning, synthetic (conf/data/)")):
        with pytest.raises(ConfigError) as err:
            check_group_choices(["seed=1", override], Path(CONF))
        assert str(err.value) == f"{override}: no such option; choose one of {choices}"
    check_group_choices(["stage=multimodal", "data=folder", "logger=null"], Path(CONF))


# through train.py (a subprocess each): a wrong value Hydra composes, and a group option checked before Hydra;
# the other values and options are checked in this process (the tests above)
@pytest.mark.parametrize("overrides, needle", [
    (["seed=abc"], "seed=abc (a string): expected an integer"),
    (["stage=foo"], "stage=foo: no such option; choose one of evaluate, multimodal, predict, pretrain_ae"),
])
def test_train_py_refuses_in_one_line_with_exit_2_andleaves_nothing(tmp_path: Path, overrides: list, needle: str) -> None:
    result = train_py(tmp_path, *overrides)
    assert result.returncode == 2, output(result)
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a failed command left files behind"


def test_an_unknown_key_is_a_config_error_exit_2(tmp_path: Path) -> None:
    result = train_py(tmp_path, "data.batch_sise=3")
    assert result.returncode == 2, output(result)
    assert "data.batch_sise" in result.stderr and "Traceback" not in result.stderr


def test_a_trainer_flag_without_plus_reaches_the_trainer(tmp_path: Path) -> None:
    """The trainer node as storyreason.run instantiates it (the composition is train.py's: tests/conftest.py)."""
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config(tmp_path, "pretrain_ae", ["trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"])
    trainer = instantiate(cfg.trainer, callbacks=[], logger=False)
    assert (trainer.limit_val_batches, trainer.num_sanity_val_steps) == (1, 0)


@pytest.mark.parametrize("experiment", ["demo", "prose_demo"])
def test_a_debug_preset_wins_over_the_recipe(experiment: str) -> None:
    """`experiment=X debug=limit` is a tiny run: the recipe's epochs and batch fractions give way to the
    preset's (and the command line still wins over both)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["stage=multimodal", f"experiment={experiment}", "debug=limit"])
        assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches) == (1, 4)
        cfg = compose(config_name="config", overrides=["stage=multimodal", f"experiment={experiment}", "debug=limit",
                                                       "trainer.limit_train_batches=2"])
        assert cfg.trainer.limit_train_batches == 2
