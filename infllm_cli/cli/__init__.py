"""The ``infllm`` command line (:mod:`.app`).

The command never reaches the network: the Hugging Face libraries are put in offline mode for this process
here, before anything imports them, so that no code path (config, tokenizer, generation config, a
transformers hub check) can retry a connection. Models come from local directories or the local cache.
"""

import os

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
