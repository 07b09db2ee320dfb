"""Fine-tuning jobs: the rows and durable queue in the service database (`store.py`), the
service the HTTP API and CLI call (`service.py`), the "auto" hyperparameter policy (`auto.py`)
and the worker that trains claimed jobs in a subprocess (`worker.py`).

    affina serve --workers 1            # the API, with one local worker
    affina jobs worker --db URL         # more workers, on this or other machines
    affina jobs submit --training-file examples/product_json/train.jsonl --follow
"""

__all__ = ["JobStore"]


def __getattr__(name: str):
    if name == "JobStore":  # loaded on first use: the CLI's parser stays light
        from .store import JobStore

        return JobStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
