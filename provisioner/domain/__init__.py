"""Domain rules: numbers, states and the errors they raise; no I/O here."""
