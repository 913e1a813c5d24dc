"""`make mutants` (`python -m tests.mutants`): hand-written mutants of behaviour users rely on; each one must
make the tests named for it fail.

Each mutant replaces one exact snippet of one source file with a broken version, in a temporary copy of
the repository's tracked files, and runs only its tests there (`pytest -x -q`, with a time limit). A
mutant is killed when a test fails, survives when they all pass, times out when they run past the
limit, and is an error when its snippet is not found exactly once (the source moved: re-anchor it). The selected tests first run once unmutated
and must pass, so a broken checkout is not counted as kills. Prints one line per mutant and
`mutants: K killed of N` last; exits 1 unless every mutant is killed. How to add one: docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    """`original` (found exactly once in `file`) becomes `replacement`; `tests` (pytest node ids) must fail."""

    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]


MODULE = "tests/modules/test_multimodal.py::"
DECODING = "tests/models/test_decoding.py::"
ERRORS = "tests/test_errors.py::"

MUTANTS = [
    Mutant("copy_last_frame scores the first context frame", "storyreason/modules/multimodal.py",
           'update_images(m["copy_last_frame"], context[:, -1], target)',
           'update_images(m["copy_last_frame"], context[:, 0], target)',
           (MODULE + "test_baselines_are_their_hand_computations_on_the_test_split",)),
    Mutant("mean_context leaves out the last frame", "storyreason/modules/multimodal.py",
           'update_images(m["mean_context"], context.mean(dim=1), target)',
           'update_images(m["mean_context"], context[:, :-1].mean(dim=1), target)',
           (MODULE + "test_baselines_are_their_hand_computations_on_the_test_split",)),
    Mutant("copy_last_caption repeats the first context caption", "storyreason/modules/multimodal.py",
           'last = batch["context_captions"][:, -1]',
           'last = batch["context_captions"][:, 0]',
           (MODULE + "test_baselines_are_their_hand_computations_on_the_test_split",)),
    Mutant("the latent MSE term is dropped from the loss", "storyreason/modules/multimodal.py",
           '"lat": F.mse_loss(prediction.encoding.latent.float(), prediction.target_latent),',
           '"lat": 0 * F.mse_loss(prediction.encoding.latent.float(), prediction.target_latent),',
           (MODULE + "test_loss_is_the_weighted_sum_of_caption_ce_image_l1_and_latent_mse",)),
    Mutant("teacher forcing feeds the target unshifted (the seed's leak)", "storyreason/models/story.py",
           "return torch.cat([torch.full_like(target[:, :1], BOS_ID), target[:, :-1]], dim=1)",
           "return target",
           (MODULE + "test_loss_is_the_weighted_sum_of_caption_ce_image_l1_and_latent_mse",)),
    Mutant("padding counted in token accuracy", "storyreason/metrics.py",
           'MulticlassAccuracy(num_classes=vocab_size, average="micro", ignore_index=PAD_ID, validate_args=False)',
           'MulticlassAccuracy(num_classes=vocab_size, average="micro", validate_args=False)',
           (MODULE + "test_baselines_are_their_hand_computations_on_the_test_split",)),
    Mutant("the latent cache looks up the frame before each one", "storyreason/modules/multimodal.py",
           'z = table[batch["frame_index"].to(table.device)]',
           'z = table[batch["frame_index"].to(table.device) - 1]',
           (MODULE + "test_cached_latents_give_the_same_first_loss",)),
    Mutant("predict reads frames in plain sort order", "storyreason/predict.py",
           "        key=natural_key,\n", "",
           ("tests/test_predict.py::test_frames_are_read_in_natural_name_order",)),
    Mutant("beam size ignored by the caption decoding", "storyreason/models/decoding.py",
           "    if beam_size == 1:\n        return model.generate(",
           "    if True:\n        return model.generate(",
           (DECODING + "test_decode_captions_decodes_with_the_beam_it_is_given",)),
    Mutant("eval.beam_size never reaches the model", "storyreason/evaluate.py",
           'module.decoding = {k: cfg.eval[k] for k in ("beam_size", "max_len", "length_penalty")}',
           'module.decoding = {k: cfg.eval[k] for k in ("max_len", "length_penalty")}',
           ("tests/test_evaluate.py::test_evaluate_runs_the_model_once_per_batch",)),
    Mutant("length penalty ignored", "storyreason/models/decoding.py",
           "    if length_penalty > 0:\n", "    if False:\n",
           (DECODING + "test_length_penalty_picks_the_final_hypothesis_with_the_best_score_per_length",)),
    Mutant("no warmup", "storyreason/modules/base.py",
           "return (step + 1) / warmup", "return 1.0",
           ("tests/modules/test_schedule.py::test_warmup_then_cosine_to_the_floor",)),
    Mutant("a non-finite loss trains on", "storyreason/modules/base.py",
           "    if not torch.isfinite(loss):\n", "    if False:\n",
           (ERRORS + "test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint",)),
    Mutant("a config error exits 1", "train.py",
           '        print(f"ConfigError: {err}", file=sys.stderr)\n        sys.exit(2)',
           '        print(f"ConfigError: {err}", file=sys.stderr)\n        sys.exit(1)',
           ("tests/test_config.py::test_train_py_refuses_in_one_line_with_exit_2_andleaves_nothing[overrides1-stage=foo: "
            "no such option; choose one of evaluate, multimodal, predict, pretrain_ae]",)),
    Mutant("a cache entry trusted when half-written", "storyreason/data/cache.py",
           "return (cache_path(source, cache_dir) / _META).is_file()",
           "return cache_path(source, cache_dir).is_dir()",
           ("tests/data/test_cache.py::test_a_build_killed_half_way_leaves_no_entry_a_later_run_trusts",)),
    Mutant("resume skips the sampler's place in the epoch", "storyreason/data/datamodule.py",
           'sampler.skip = self._train_position["batches"] * self.batch_size',
           "sampler.skip = 0",
           ("tests/test_resume.py::test_ctrl_c_then_a_kill_mid_epoch_then_resume_ends_like_an_uninterrupted_run",)),
    # issue 24: the promise table's other rows (docs/testing.md)
    Mutant("divergence flagged at any rise above the best, factor ignored", "storyreason/callbacks.py",
           "current > self.factor * self.best else 0", "current > self.best else 0",
           ("tests/test_callbacks.py::test_a_healthy_run_has_not_diverged",)),
    Mutant("divergence flagged at the first spike, patience ignored", "storyreason/callbacks.py",
           "if self.above >= self.patience and self.diverged is None:", "if self.above >= 1 and self.diverged is None:",
           ("tests/test_callbacks.py::test_a_healthy_run_has_not_diverged",)),
    Mutant("a non-finite validation loss is no divergence", "storyreason/callbacks.py",
           "if not math.isfinite(current) or current > self.factor", "if current > self.factor",
           ("tests/test_callbacks.py::test_patience_validations_above_factor_times_the_best_or_not_finite_are_a_divergence",)),
    Mutant("a signal in an epoch's last step saves nothing at the epoch's end", "storyreason/callbacks.py",
           "            if not trainer.fast_dev_run:\n                trainer.save_checkpoint(self.last, weights_only=False)\n            self._stop(trainer)\n",
           "            self._stop(trainer)\n",
           ("tests/test_resume.py::test_a_run_stopped_in_an_epochs_last_step_resumes_from_the_epoch_end_last_ckpt",)),
    Mutant("the oracle frame baseline scores the target", "storyreason/modules/multimodal.py",
           'self.unit_frames(batch["oracle_frame"])', 'self.unit_frames(batch["target_frame"])',
           (MODULE + "test_baselines_are_their_hand_computations_on_the_test_split",)),
    Mutant("the oracle caption baseline scores the reference", "storyreason/modules/multimodal.py",
           'self._score_captions(m["oracle_caption"], batch["oracle_caption"], reference,',
           'self._score_captions(m["oracle_caption"], reference, reference,',
           (MODULE + "test_baselines_are_their_hand_computations_on_the_test_split",)),
    Mutant("the tokenizer is fitted on every split (a leak)", "storyreason/data/datamodule.py",
           'CaptionTokenizer.fit(self.splits["train"].captions,',
           'CaptionTokenizer.fit([c for split in self.splits.values() for c in split.captions],',
           ("tests/data/test_datamodule.py::test_tokenizer_is_built_on_the_train_split",)),
    Mutant("the <unk> rate counts <eos> among the tokens", "storyreason/data/datamodule.py",
           "/ max(int(full.sum()) - len(full), 1)", "/ max(int(full.sum()), 1)",
           ("tests/data/test_datamodule.py::test_tokenizer_is_built_on_the_train_split",)),
    Mutant("a caption that just fits counts as truncated", "storyreason/data/datamodule.py",
           "truncated = float((full > self.max_caption_len).mean())", "truncated = float((full >= self.max_caption_len).mean())",
           ("tests/data/test_datamodule.py::test_tokenizer_is_built_on_the_train_split",)),
    Mutant("the lr scales by the first width, not the widest", "storyreason/modules/base.py",
           "return lr * reference / max(widths)", "return lr * reference / widths[0]",
           (MODULE + "test_the_learning_rate_scales_down_for_a_wider_story_model_only",)),
    Mutant("stage 1 ignores model.mse_weight", "storyreason/modules/autoencoder.py",
           '{"l1": 1.0, "mse": self.hparams.mse_weight}', '{"l1": 1.0, "mse": 1.0}',
           ("tests/modules/test_autoencoder.py::test_stage1_loss_is_l1_plus_mse_weight_times_mse",)),
    Mutant("the residual head forgets the last latent", "storyreason/models/story.py",
           "return latents[:, -1] + self.net[-1](motion)", "return self.net[-1](motion)",
           ("tests/models/test_latent_head.py::test_the_residual_head_is_the_last_latent_plus_a_cnn_of_the_last_two_maps_and_the_state",)),
    Mutant("the residual head sees no motion (the last map twice)", "storyreason/models/story.py",
           "previous = latents[:, -2].view(b, *self.shape) if k > 1 else last", "previous = last",
           ("tests/models/test_latent_head.py::test_the_residual_head_sees_the_last_two_latents_and_the_state_only",)),
    Mutant("pad puts a tall image at the left edge", "storyreason/data/images.py",
           "((size - inner[0]) // 2, (size - inner[1]) // 2)", "(0, (size - inner[1]) // 2)",
           ("tests/data/test_images.py::test_pad_of_a_tall_image_puts_the_bars_left_and_right",)),
    Mutant("the folder's test fraction is its val fraction", "storyreason/data/sources/folder.py",
           '{"val": val_fraction, "test": test_fraction}', '{"val": val_fraction, "test": val_fraction}',
           ("tests/data/test_folder.py::test_val_and_test_fractions_are_each_their_own",)),
    Mutant("the folder cache key sees the captions only", "storyreason/data/sources/folder.py",
           'for sub in ("images", "captions")', 'for sub in ("captions",)',
           ("tests/data/test_folder.py::test_a_changed_image_or_setting_is_a_new_key",)),
    Mutant("logger=tensorboard_csv writes no CSV", "conf/logger/tensorboard_csv.yaml",
           "  - csv\n", "",
           ("tests/test_experiments.py::test_logger_tensorboard_csv_writes_both_logs",)),
    Mutant("experiment=demo trains stage 2 on whole epochs", "conf/recipe/demo/multimodal.yaml",
           "limit_train_batches: 0.8", "limit_train_batches: 1.0",
           ("tests/test_experiments.py::test_experiment_demo_brings_its_stage_recipe[multimodal-2-0.8]",)),
    Mutant("experiment=storyreasoning keeps words seen once", "conf/experiment/storyreasoning.yaml",
           "vocab_min_count: 2 ", "vocab_min_count: 1 ",
           ("tests/test_experiments.py::test_experiment_storyreasoning_is_the_dataset_on_a_gpu_with_its_text_settings[pretrain_ae]",)),
    Mutant("the context bias raises the earlier captions' words as the last caption's", "storyreason/models/story.py",
           "return words.masked_fill(kept == 0, PAD_ID), (kept != 2).long()",
           "return words.masked_fill(kept == 0, PAD_ID), (kept == 0).long()",
           ("tests/models/test_pointer.py::test_the_context_bias_raises_the_last_and_the_earlier_captions_words_by_their_own_bonus",)),
    Mutant("the caption encoder's backward pass reads the padding before the words", "storyreason/models/text.py",
           "order = torch.where(words, lengths[:, None] - 1 - steps, steps)[:, :, None]",
           "order = (tokens.shape[1] - 1 - steps).expand(len(tokens), -1)[:, :, None]",
           ("tests/models/test_text.py::test_states_summary_and_gradients_are_those_of_a_packed_gru",)),
    Mutant("the hard-token weights take part in the backward pass", "storyreason/models/losses.py",
           "torch.exp(-nll.detach())", "torch.exp(-nll)",
           ("tests/models/test_losses.py::test_hard_token_mean_weights_each_token_by_one_minus_p_to_the_gamma",)),
    Mutant("the copying decoder's training loss ignores focal_gamma", "storyreason/models/story.py",
           "return hard_token_mean(nll, focal_gamma)", "return nll.mean()",
           ("tests/models/test_losses.py::test_caption_loss_with_focal_gamma_is_the_hard_token_mean_of_the_token_losses",)),
    Mutant("a second read is queried without what the first read", "storyreason/models/story.py",
           "read = read + attention(out + read, *keys_values", "read = read + attention(out, *keys_values",
           ("tests/models/test_story.py::test_a_second_read_adds_to_the_first_what_it_reads_queried_with_it",)),
    Mutant("motion cells reach the last map's cells only", "storyreason/models/story.py",
           "cells = cells + self.motion_proj(motion.flatten(2).transpose(1, 2))[:, None]",
           "cells = cells + F.pad(self.motion_proj(motion.flatten(2).transpose(1, 2))[:, None], (0, 0, 0, 0, 0, 1))",
           ("tests/models/test_story.py::test_motion_cells_add_the_latent_heads_hidden_map_to_every_map_cell",)),
    Mutant("the bidirectional summary is the forward pass's twice", "storyreason/models/text.py",
           "summary.append(backward[:, 0])", "summary.append(summary[0])",
           ("tests/models/test_text.py::test_padding_does_not_change_the_summary_or_the_states",)),
    Mutant("a batch's region labels are the two context frames before the target", "storyreason/data/windows.py",
           'batch["regions"] = self.regions[index[:, -2:]].long()', 'batch["regions"] = self.regions[index[:, -3:-1]].long()',
           ("tests/data/test_synthetic.py::test_the_region_labels_reach_the_batches_through_the_cache",)),
    Mutant("a cell's region label swaps the row and the column", "storyreason/data/sources/synthetic.py",
           "labels[_covers(obj, xx - obj.x, yy - obj.y)] = thing.row * 3 + thing.col",
           "labels[_covers(obj, xx - obj.x, yy - obj.y)] = thing.col * 3 + thing.row",
           ("tests/data/test_synthetic.py::test_each_cell_is_labelled_with_the_region_its_caption_gives_the_object_drawn_there",)),
    Mutant("the region loss reads the label grid transposed", "storyreason/modules/multimodal.py",
           'labels = batch["regions"].flatten(2)', 'labels = batch["regions"].transpose(2, 3).flatten(2)',
           ("tests/modules/test_region_loss.py::test_the_region_term_is_the_cells_cross_entropy_and_training_lowers_it",)),
    Mutant("data.group_by_length sorts story batches by each window's length, not its story's longest",
           "storyreason/data/samplers.py", "self.lengths = longest[self.groups]", "self.lengths = self.lengths",
           ("tests/data/test_samplers.py",)),
    Mutant("data.group_by_length leaves a chunk's batches in rising length", "storyreason/data/samplers.py",
           "reshape(whole, self.batch)[torch.randperm(whole, generator=generator).numpy()]",
           "reshape(whole, self.batch)", ("tests/data/test_samplers.py",)),
    Mutant("a batch is cut to its windows' targets only, not their context captions", "storyreason/data/windows.py",
           "longest = self.lengths[index].max(dim=1).values", "longest = self.lengths[index[:, -1]]",
           ("tests/data/test_samplers.py", "tests/data/test_datamodule.py")),
]


def copy_repository(dest: Path) -> None:
    """The working tree's tracked files (uncommitted edits included) copied under `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    """pytest `tests` in `copy`: ("passed" | "failed" | "timeout", seconds, the first failing test or the tail)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               f"--basetemp={copy.parent / (copy.name + '.pytest')}", *tests],  # one per copy
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - started, f"no result within {timeout:.0f} s"
    seconds = time.perf_counter() - started
    if done.returncode == 0:
        return "passed", seconds, ""
    failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", done.stdout, re.MULTILINE)  # ids may hold spaces
    return "failed", seconds, failed[0] if failed else done.stdout[-2000:] + done.stderr[-2000:]


def try_mutant(m: Mutant, copy: Path, timeout: float) -> tuple[bool, str]:
    """Apply `m` in `copy`, run its tests, put the file back: (killed, the line to print)."""
    path = copy / m.file
    text = path.read_text() if path.is_file() else ""
    found = text.count(m.original)
    if found != 1:
        return False, f"ERROR     {m.name}: its snippet is found {found} times in {m.file}; re-anchor it"
    path.write_text(text.replace(m.original, m.replacement))
    try:
        outcome, seconds, detail = run_tests(copy, list(m.tests), timeout)
    finally:
        path.write_text(text)
    if outcome == "passed":
        return False, f"SURVIVED  {m.name} ({m.file}, {seconds:.0f} s): {', '.join(m.tests)} still pass"
    if outcome == "timeout":  # slow, not caught: raise --timeout on a busy machine
        return False, f"TIMEOUT   {m.name} ({m.file}): {detail}"
    return True, f"killed    {m.name} ({seconds:.0f} s, by {detail.strip().splitlines()[-1]})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only the mutants whose name contains one of these")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for one mutant's tests (default 600)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="mutants tried at once, each in its own copy (default: 2, or 1 on one core)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.names or any(n in m.name for n in args.names)]
    if args.list:
        for m in mutants:
            print(f"{m.name}  ({m.file})\n    " + "\n    ".join(m.tests))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="storyreason-mutants-") as tmp:
        copies: queue.Queue[Path] = queue.Queue()
        for i in range(max(1, args.jobs)):
            copy_repository(Path(tmp) / str(i))
            copies.put(Path(tmp) / str(i))
        tests = sorted({t for m in mutants for t in m.tests})
        outcome, seconds, detail = run_tests(Path(tmp) / "0", tests, args.timeout * 2)
        if outcome != "passed":
            print(f"the selected tests do not pass unmutated ({outcome}, {seconds:.0f} s): {detail}")
            return 1
        print(f"unmutated: {len(tests)} tests pass ({seconds:.0f} s)", flush=True)

        def in_a_free_copy(m: Mutant) -> bool:
            copy = copies.get()
            try:
                killed, line = try_mutant(m, copy, args.timeout)
            finally:
                copies.put(copy)
            print(line, flush=True)
            return killed

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            killed = sum(pool.map(in_a_free_copy, mutants))
    print(f"({time.perf_counter() - started:.0f} s in all, {max(1, args.jobs)} at a time)")
    print(f"mutants: {killed} killed of {len(mutants)}")
    return 0 if killed == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())
