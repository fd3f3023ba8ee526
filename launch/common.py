"""Shared plumbing of the launch scripts: flag parsing with one-line errors."""

from __future__ import annotations

import logging
import sys

from absl import flags


def setup_logging() -> None:
    """INFO logs from genalign_jax; orbax (absl) only from WARNING, it logs every file it writes."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses absl/ml-collections flags; a bad flag or override exits 2 with a one-line error.

    ml-collections raises plain exceptions (``AttributeError`` for an unknown
    ``--config.x`` field, ``ValueError`` for a bad type or config file) that
    absl would print as a traceback.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        message = str(err)
        if "Traceback" in message:  # a config file raised: keep its head and its final line
            head = message.split("Traceback")[0].strip()
            message = f"{head} {message.strip().splitlines()[-1]}"
        print(f"error: {message}\nPass --help for usage.", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, ValueError, TypeError, KeyError, FileNotFoundError) as err:
        message = str(err).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        print(f"error: bad flag or config override: {message}", file=sys.stderr)
        sys.exit(2)
