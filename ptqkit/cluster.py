"""Ray for the commands that outgrow one process: a local Ray started by the command, or an existing cluster."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

from .errors import UserError


@contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[int]:
    """Start a local Ray with `num_cpus` CPUs (default: all cores), or join the cluster at `address`.

    Yields the cluster's CPU count; shuts Ray down (disconnects from a joined cluster) on exit."""
    import ray

    if address and num_cpus:
        raise UserError("--workers sizes a local Ray; a cluster joined with --ray has its own CPUs: pass one of them")
    # Workers inherit this: the trials' torch must not read the model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **kwargs)
    except ConnectionError as e:
        raise UserError(f"cannot join the Ray cluster at {address} ({e}); start one with `ray start --head`") from None
    try:
        yield int(ray.cluster_resources().get("CPU", 0))
    finally:
        ray.shutdown()
