"""The library the examples share; it imports nothing from any example.

- `train`: the replicated train state, jitted train and eval steps, the epoch loop `fit`.
- `checkpoint`: orbax checkpoints, config.json, metrics.jsonl, exact resume.
- `data`: epoch orders, placed and padded batches, synthetic images, normalisation.
- `cifar10`: CIFAR-10 with the paper's fixed 45k/5k/10k split (npz copy, tensorflow-datasets, or
  the official archive downloaded once).
- `download`: data sets that fetch themselves: checksum-verified, atomic, cached per user.
- `optimizers`: the optimisers by name (the paper's, AdamW, both Muons), built with orthax's
  aliases; masks and attention layouts by name; schedules.
- `compare`: several optimisers and seeds: `run_config`, the runner, the markdown table, the plot,
  the device line and results.json, for every example.
- `config`: command-line flags from a config dataclass's fields; `--config NAME` presets laid
  under the flags (`command_line`), the same in every example's main.py.
- `diagnostics`: per-epoch diagnostics on a fixed batch (`orthax.diagnostics`).
"""
