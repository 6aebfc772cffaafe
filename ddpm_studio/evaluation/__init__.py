"""Judging a model and a dataset without downloads (issue 17). Qt-free services layer.

- ``features``: a fixed, seeded random-weight conv net and pixel statistics (any domain, 1 or 3 channels).
- ``metrics``: KID (unbiased, bootstrap interval), Fréchet distance, precision / recall / density /
  coverage, each beside the real-vs-real floor; ``evaluate`` a LoadedModel, ``evaluate_checkpoints`` a run.
- ``memorization``: nearest training images of each sample and the near-copy summary.
- ``timelapse``: a run's preview grids as a GIF and a contact sheet.
- ``doctor``: dataset findings (duplicates, mixed sizes / modes, mirror, small sets, large images).
- ``cli_commands``: the ``eval``, ``nearest``, ``timelapse`` and ``doctor`` subcommands.
"""
