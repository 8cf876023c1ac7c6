"""screener: batch message-risk screening for DuckDB and Parquet message archives."""

__version__ = "0.1.0"
