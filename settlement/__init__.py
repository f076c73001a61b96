"""Settlement: periods, the close, signed statements, disputes, reports."""
