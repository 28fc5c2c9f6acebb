"""The library the examples share; it imports nothing from any example.

- `train`: the replicated train state, jitted train and eval steps, the epoch loop `fit`.
- `checkpoint`: orbax checkpoints, config.json, metrics.jsonl, exact resume.
- `data`: epoch orders, placed and padded batches, synthetic images, normalisation.
- `cifar10`: CIFAR-10 with the paper's fixed 45k/5k/10k split (npz copy, tensorflow-datasets, or
  the official archive downloaded once).
- `download`: data sets that fetch themselves: checksum-verified, atomic, cached per user.
- `optimizers`: the optimisers by name (the paper's, AdamW, both Muons), built with orthax's
  aliases; masks and attention layouts by name; schedules.
- `compare`: several optimisers and seeds: the runs, the markdown table, the plot.
- `config`: command-line flags from a config dataclass's fields; presets laid under the flags.
- `diagnostics`: per-epoch diagnostics on a fixed batch (`orthax.diagnostics`).
"""
