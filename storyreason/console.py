"""What a run prints: library chatter that says nothing about the run is silenced where it starts.

Each filter names one message (never a whole warning category or library), so every other warning and
log line still reaches the console. Where a config setting is the source, the config is fixed instead:
`conf/trainer/cpu.yaml` leaves `limit_train_batches` unset (Lightning announces an explicit 1.0) and
Lightning's default model summary off (ours is a callback); `conf/hydra/default.yaml` sets the log
levels of TensorBoard's event reader and of Optuna's database migrations. Progress bars go to stderr
(`storyreason.callbacks.ProgressBar`), so stdout holds the result tables alone.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's rank-zero info lines that are adverts or internals, by their start
LIGHTNING_CHATTER = (
    "💡 Tip:",  # an advert for Lightning's cloud products
    "Loading `train_dataloader` to estimate number of stepping batches",  # the learning-rate schedule asked
)
# where Lightning's rank_zero_info logs (lightning_utilities' logger, renamed by lightning.pytorch on import)
LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class DropMessages(logging.Filter):
    """Drops the log records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


_LIGHTNING_FILTER = DropMessages(LIGHTNING_CHATTER)


def quiet_libraries() -> None:
    """Install the targeted filters; calling it again (the demo runs train.py twice in one process) adds none."""
    import lightning  # noqa: F401  (its import adds the console handler removed below)

    if logging.getLogger().hasHandlers():
        # Lightning's lines reach Hydra's console and train.log handlers on the root logger; the console
        # handler `import lightning` adds to its own logger would print each of them a second time
        for handler in list(logging.getLogger("lightning").handlers):
            logging.getLogger("lightning").removeHandler(handler)
    logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER).addFilter(_LIGHTNING_FILTER)
    # torch deprecated its LeafSpec class, which Lightning's own pytree helper still builds at every step:
    # nothing a user can change, and it goes once Lightning stops using it
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
