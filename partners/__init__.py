"""Who may act and on what terms: partners, rate cards, partner operations, API keys."""
