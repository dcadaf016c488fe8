"""What a ``bapo serve`` run is told to do."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bapo.core.fields import option
from bapo.errors import ConfigError
from bapo.runtime.config import cache_dir_option, check_device, device_option, dtype_option, model_option

# What a served adapter may be called: one folder name, nothing that could walk out of the adapters directory.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ServeConfig:
    """A ``bapo serve`` run: the base model, the folder of users' adapters, and the server's limits."""

    model: str = model_option("Base model the adapters were trained on (its name is the base model's id in the API).")
    adapters: str = option("", "Folder of adapters: each sub-folder (a PEFT adapter from bapo train) is served under "
                               "its folder name; folders added later are served too.")
    host: str = option("127.0.0.1", "Address to listen on (127.0.0.1: this machine only).")
    port: int = option(8000, "Port to listen on.")
    api_key: str = option("", "Require 'Authorization: Bearer KEY' (default: $BAPO_API_KEY; empty: no key). One "
                              "key for everything: use --keys to give each user their own.")
    keys: str = option("", "A keys file (YAML; bapo keys add writes it): each key sees and uses only the adapters its "
                           "entry names, another user's adapter is a 404 as an unknown one is, a bad key a 401.")
    max_adapters: int = option(8, "Adapters kept loaded at once; the least recently used leaves first.")
    fallback_to_base: bool = option(False, "Answer a request for an unknown adapter with the base model (the "
                                           "response's model says so) instead of a 404.")
    max_tokens: int = option(1024, "Largest max_tokens a request may ask for (400 above it).")
    default_max_tokens: int = option(256, "max_tokens of a request that gives none.")
    max_body_kb: int = option(512, "Largest request body, in KiB (413 above it).")
    max_batch: int = option(16, "Requests answered together in one batch.")
    batch_wait_ms: int = option(5, "How long a batch waits for more requests to join it, in milliseconds.")
    max_prompt_length: int = option(1024, "Longest prompt, in tokens (longer ones keep their end).")
    cache_dir: str = cache_dir_option()
    device: str = device_option()
    dtype: str = dtype_option()

    def validate(self) -> None:
        if not self.adapters:
            raise ConfigError("adapters: give the folder of adapters to serve (--adapters DIR)")
        check_device(self.device, self.dtype)
        if self.keys and self.api_key:
            raise ConfigError("api_key: give one shared --api-key or per-user --keys, not both")
        for name in ("max_adapters", "max_tokens", "default_max_tokens", "max_body_kb", "max_batch",
                     "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1")
        if not 0 < self.port < 65536:
            raise ConfigError("port: must be in 1..65535")
