"""Fine-tuning and evaluation for screener's models. Imported lazily by `screener train` and `screener eval`."""
