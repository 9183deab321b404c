"""ApiFunction under Lambda SnapStart: what is loaded before the snapshot and what is made
again after every restore.

Before the snapshot (``warm``): the container, faiss, every wire model's validator and the
boto3 clients of the services the settings name (parsing their service models is most of
what a client costs). After a restore (``renew``): every random source that is not
``os.urandom`` at each use is reseeded (Python's ``random``, which jitters retries, and
numpy's global generator), and the boto3 clients are made again: their pooled connections
and resolved credentials belong to the environment that took the snapshot. Nonces, data
keys, object, job and request ids come from ``os.urandom`` at each use, and no data key is
held before the snapshot (no request has run), so restored environments share none of them;
``tests/test_snapstart.py`` forks after init, as a restore does, and checks it.

Outside Lambda's managed runtime (no ``snapshot_restore_py``) nothing is registered;
``ciphervec serve`` calls ``warm`` itself before it takes connections.
"""

from __future__ import annotations

import random
import sys

import numpy as np

from ..infra import wiring
from . import schemas


def warm() -> None:
    """Everything a first request would load, loaded now."""
    wiring.warm()
    schemas.build()


def renew() -> None:
    """What no two restored environments may share, made again."""
    random.seed()  # from os.urandom
    if "numpy.random" in sys.modules:  # numpy's global generator, if init made it
        np.random.seed()  # from the OS as well
    wiring.renew()


try:
    from snapshot_restore_py import register_after_restore, register_before_snapshot
except ImportError:  # not Lambda's managed runtime: there are no snapshots
    pass
else:
    register_before_snapshot(warm)
    register_after_restore(renew)
