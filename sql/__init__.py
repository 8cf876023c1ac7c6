"""SQL statements of screener, one file per query. Installed as the package ``screener.sql``."""
