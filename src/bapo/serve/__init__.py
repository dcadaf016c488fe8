"""``bapo serve``: many users' adapters over one base model behind an OpenAI-compatible API."""
