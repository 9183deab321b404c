"""Jobs a dead process left marked, queued again by the next request that proves the key."""

from __future__ import annotations

import logging

from ..engine.errors import CipherVecError
from . import request as rq

log = logging.getLogger("ciphervec.recovery")


def after(status: int) -> None:
    """After a request on one index answered ``status``: when it succeeded (so its key
    opened the index), queue what an interrupted training or re-encryption left marked.
    Never fails the request: a job that cannot be queued gives its mark back."""
    target = rq.target()
    if target is None or status >= 400:
        return
    tenant, name, kek = target
    c = rq.app()
    try:
        c.service.take_up(tenant, name, kek, c.trainer)  # a job the queue refuses gives its mark back
    except CipherVecError:
        return  # the next request tries again
    except Exception as exc:  # a store fault, say: this request's answer stands all the same
        log.warning("could not take up the jobs of an index: %s", type(exc).__name__)
