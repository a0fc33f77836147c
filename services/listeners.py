"""Nothing listens that the operator did not ask for.

`bentoml serve` runs a circus arbiter that takes control commands (stop, restart, *add a
watcher*, which starts any program) on two loopback TCP ports it picks itself: any local process
(a sidecar, another container in the pod, another user of the host) could run code through it.
:func:`private_arbiter_sockets` makes the arbiter use Unix sockets in a private (0700) directory
instead, so a Roost server listens only on the HTTP and gRPC addresses it was given. It is
applied when a Roost service is defined, which happens before `bentoml serve` builds its arbiter.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_patched = False


def private_arbiter_sockets() -> None:
    global _patched
    if _patched:
        return
    from bentoml._internal.utils import circus

    def create_arbiter(watchers, *, threaded: bool = False, **kwargs):
        folder = tempfile.mkdtemp(prefix="roost-arbiter-")  # mode 0700: only this user
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
        arbiter_cls = circus.ThreadedArbiter if threaded else circus.Arbiter
        return arbiter_cls(
            watchers,
            endpoint=f"ipc://{folder}/control",
            pubsub_endpoint=f"ipc://{folder}/pubsub",
            check_delay=kwargs.pop("check_delay", 10),  # as BentoML's own
            **kwargs,
        )

    circus.create_standalone_arbiter = create_arbiter
    _patched = True
