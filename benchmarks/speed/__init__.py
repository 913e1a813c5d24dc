"""`make bench`: where the time goes in both stages, measured side by side in one run.

    .venv/bin/python benchmarks/bench.py [--quick] [--frames 1500] [--rounds 3] [--out benchmarks/results.json]

Writes StoryReasoning-schema parquet whose frames are 1280x720 JPEGs (cache_bench's writer; kept in
--workdir and reused while the frame count matches), builds the frame cache through
`data=storyreasoning` in a fresh cache folder, then measures each stage with the real Hydra config:

  (a) `Trainer.fit` (the configured callbacks and logger, validation off) vs a bare PyTorch loop over
      the same model and batches (plus one pass of the train loader): time per epoch, `fit_overhead_ratio`;
  (b) our training epoch (`Trainer.fit` over the frame cache) vs a seed-style loop whose Dataset
      decodes and resizes every frame with PIL in `__getitem__` (NCHW model; stage 2 re-encodes the
      context every step): `speedup_vs_seed_style` per epoch once the cache exists, and
      `speedup_vs_seed_style_first_run` for a first one-epoch run, where our side also pays the cache
      build, the datamodule setup and Trainer start-up, and the seed side its parquet read;
  (c) stage 2 with latents precomputed once per run (`model.cache_latents=true`, their encoding
      counted) vs re-encoding the context frames every step: `latent_cache_speedup`;
  (d) the DataModule alone: train batches of frames and windows per second;
  (e) model FLOPs per image (torch.utils.flop_counter) x images/s / a GEMM peak measured in the same
      run and precision: `flop_utilization`; and its ceiling, the convolutions alone, each timed in
      isolation on its training input (`flop_utilization_ceiling`);
  (f) fp32 vs bf16-mixed: throughput and autoencoder L1 after the same steps, where bf16 is native;
  (g) peak memory; (h) the demo's wall time per stage, read from its last runs;
  and stage 1's bare step with the autoencoder `model.compile=true` builds (`compile_speedup`).

How the contestants share the machine fairly is in `speed.timing`. Absolute figures are the fastest
round's; ratios come first in the table.

The package, in the order data flows through it:
  workload     the benchmark data, each stage's composed config, the datamodule
  timing       clocks, the interleaved rounds around `Trainer.fit`, ratios of paired timings
  hardware     machine description, memory, GEMM peak, FLOP counts, the bf16 probe
  contestants  the bare PyTorch steps and the seed-style datasets
  measure      each stage's measurements and `run`, the results JSON as a dict
  report       targets, the markdown table, the JSON file
  cli          the flags and `main`
"""
