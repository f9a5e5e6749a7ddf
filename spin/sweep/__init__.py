"""spin sweep: grids of real training runs (seeds, parents, local or SLURM executors) and their
tables and plots. See spec.py (what a sweep is), run.py (running it), report.py (its results), compare.py
(the verdicts on its comparisons)."""
from .compare import load_comparisons, save_comparisons, verdicts
from .report import write_report
from .run import SweepStopped, TrialsFailed, changed_error, changed_trials, run_sweep, slurm_submission
from .spec import (SweepError, Trial, check_not_reserved, check_trials, finalize, grid_trials, load_sweep_file,
                   parse_comparisons, parse_values)

__all__ = ["run_sweep", "write_report", "load_sweep_file", "grid_trials", "finalize", "parse_values",
           "slurm_submission", "check_trials", "check_not_reserved", "parse_comparisons", "verdicts",
           "load_comparisons", "save_comparisons", "Trial", "SweepError", "SweepStopped",
           "TrialsFailed", "changed_trials", "changed_error"]
