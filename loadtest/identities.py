"""The identities a benchmark runs with: the cluster's certificates, or plaintext when asked.

Every process a benchmark starts, and every client it opens (in driver processes too),
finds its certificate through YUNKAI_TLS_DIR: `prepare` keeps the caller's if set, else
makes a development set in the benchmark's work directory. With --insecure everything runs
plaintext (YUNKAI_INSECURE=1), which is how the cost of mutual TLS is measured against it.
"""

from __future__ import annotations

import os

from serving.tls import INSECURE_ENV, TLS_DIR_ENV


def prepare(work_dir: str, insecure: bool = False) -> str | None:
    """The TLS directory this run uses (None: plaintext), exported to this process's environment."""
    if insecure:
        os.environ.pop(TLS_DIR_ENV, None)
        os.environ[INSECURE_ENV] = "1"
        return None
    os.environ.pop(INSECURE_ENV, None)
    directory = os.environ.get(TLS_DIR_ENV) or os.path.join(work_dir, "tls")
    from serving import certs  # cryptography, only where certificates are made

    certs.init(directory)
    os.environ[TLS_DIR_ENV] = directory
    return directory
