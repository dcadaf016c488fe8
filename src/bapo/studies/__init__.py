"""``bapo study``: users x methods x seeds, trained and evaluated alike; tables, contrasts and figures."""
