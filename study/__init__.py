"""The study around the design card: the grid of runs (sweep), its tables and plots (report), speed per method (bench).

Run from the repository root: `python -m study.sweep`, `python -m study.report`, `python -m study.bench`."""
