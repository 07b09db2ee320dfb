"""Run `affina serve` in its own process, so a test can SIGKILL it.

    python -m tests.serve.serve_proc STORE BASE PORT LOG_URL KEYS_DB [more serve options]
"""

import sys

from affina.serve.commands import register


def main() -> None:
    import argparse

    store, base, port, log_url, keys_db = sys.argv[1:6]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--store", store, "--base", base, "--port", port,
                              "--log-db", log_url, "--keys-db", keys_db, "--device", "cpu",
                              "--threads", "1", *sys.argv[6:]])
    args.func(args)


if __name__ == "__main__":
    main()
