"""The kernel: configuration, database, money and points, members, the points ledger, the CLI."""
