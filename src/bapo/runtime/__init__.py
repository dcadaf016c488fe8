"""The runtime: models on a device and in a dtype, generation, the reference and its cache, adapters."""
