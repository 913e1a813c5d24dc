"""The errors storyreason raises for input a user can fix: a config value, data, a checkpoint.

train.py prints these as one line and exits 2; any other exception is a bug (ours or a library's)
and keeps its traceback. They stay ValueErrors, so callers that catch ValueError still do.
"""

from __future__ import annotations

from hydra.errors import InstantiationException


class StoryreasonError(ValueError):
    """Input a user can fix; the message is one line naming the key, file or step and what to do."""


class ConfigError(StoryreasonError):
    """A config value is out of range or inconsistent; the message names the key and what is allowed."""


class CheckpointError(StoryreasonError):
    """A checkpoint or run directory is missing, unsafe or does not fit what the run needs."""


def user_error(err: BaseException) -> StoryreasonError | None:
    """`err` when it is ours, or ours raised while Hydra instantiated a config node (a source's DataError);
    None for anything else, which is a bug to show with its traceback."""
    if isinstance(err, StoryreasonError):
        return err
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, StoryreasonError):
        return err.__cause__
    return None
