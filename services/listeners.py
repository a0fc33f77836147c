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
import sys
import tempfile

_patched = False
_folder: str | None = None


def serve_folder() -> str:
    """This serve process's private (0700) folder: the arbiter's sockets, and the file a worker
    that cannot serve writes its reason to (services/startup.py). Made once, before the workers'
    environment is copied, and removed at exit."""
    global _folder
    if _folder is None:
        from services.startup import FATAL_FILE_ENV, SERVE_PID_ENV, worker_failure

        folder = _folder = tempfile.mkdtemp(prefix="roost-serve-")
        owner = os.getpid()
        fatal_file = os.environ[FATAL_FILE_ENV] = f"{folder}/fatal"  # workers inherit it
        os.environ[SERVE_PID_ENV] = str(owner)

        def at_exit():
            if os.getpid() == owner:
                failure = worker_failure(fatal_file)
                shutil.rmtree(folder, ignore_errors=True)
                if failure:  # a worker could not serve: say why, and exit non-zero
                    print(failure, file=sys.stderr, flush=True)
                    os._exit(3)

        atexit.register(at_exit)
    return _folder


def private_arbiter_sockets() -> None:
    global _patched
    if _patched:
        return
    from bentoml._internal.utils import circus

    def create_arbiter(watchers, *, threaded: bool = False, **kwargs):
        folder = serve_folder()
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
