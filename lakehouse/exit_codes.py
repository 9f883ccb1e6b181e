"""Exit codes of every command and job: 0 done, 1 the job failed (or a check did not hold),
2 bad configuration or usage, 3 training refused by the quality gate."""

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_QUALITY = 0, 1, 2, 3


class JobError(RuntimeError):
    """A job cannot go on, for a reason its message states in full: the command prints the
    message's first line and exits 1 (EXIT_FAILED), with no traceback."""
