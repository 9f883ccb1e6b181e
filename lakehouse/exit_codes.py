"""Exit codes of every command and job: 0 done, 1 the job failed (or a check did not hold),
2 bad configuration or usage."""

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
