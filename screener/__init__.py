"""screener: batch message-risk screening for DuckDB and Parquet message archives."""

from screener.quiet import silence_known_warnings

__version__ = "0.1.0"

# Here rather than in the CLI so that every process that runs screener code (the CLI, a scan's producer process,
# Ray workers, benchmarks) has it before it first imports torch.
silence_known_warnings()
