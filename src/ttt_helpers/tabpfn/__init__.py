"""Test-time training of TabPFN: checkpoints, the benchmark tables, fine-tuning, the estimator, the report, the CLI."""
