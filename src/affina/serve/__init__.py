"""Serving: one OpenAI-compatible API over a base model and the runs of every method.

    affina serve --store runs          # base from the runs' manifests, adapters on demand
    affina keys create --name app --models alpha,beta
    affina logs --model alpha --jsonl requests.jsonl

Importing this package imports neither torch nor the web stack; `create_app` and `serve` do.
"""

__all__ = ["ServeOptions", "serve", "build_engine", "build_app", "create_app", "Limits", "Engine",
           "KeyStore", "RequestLog", "ModelStore"]


def __getattr__(name):
    # Lazy, so `affina --help` stays fast.
    import importlib

    homes = {"ServeOptions": "server", "serve": "server", "build_engine": "server",
             "build_app": "server", "create_app": "app", "Limits": "app", "Engine": "engine",
             "KeyStore": "auth", "RequestLog": "requestlog", "ModelStore": "store"}
    if name in homes:
        return getattr(importlib.import_module(f"{__name__}.{homes[name]}"), name)
    raise AttributeError(name)
