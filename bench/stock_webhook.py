"""Observer's webhook under uvicorn's own httptools protocol: the webhook as it was before its
connections were bounded (`observer.webhook.protocol`), measured by `bench hostile` in the same run
as a baseline. Same app, settings and uvicorn configuration; only the HTTP/1.1 protocol differs."""

from __future__ import annotations

from observer.settings import load_settings
from observer.webhook.serve import run_webhook

if __name__ == "__main__":
    run_webhook(load_settings(), http="httptools")
