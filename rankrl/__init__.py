"""rankrl: keeps a search-ranking policy learning from live traffic. `rankrl.cli` wires the packages together."""

__version__ = "0.1.0"
