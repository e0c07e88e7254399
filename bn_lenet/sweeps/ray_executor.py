"""The Ray executor: a sweep's runs as Ray tasks, each ``executor.execute`` (so a task whose worker dies is
retried, max_retries, and resumes from its checkpoint), on a local instance started here (localhost only,
no dashboard) or on ``--ray-address``. Ray is an optional extra: ``pip install 'bn-lenet[ray]'``.
"""

import os
import socket
from pathlib import Path

from ..training import process
from ..errors import UserError
from .executor import RETRIES, execute


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray, an optional extra: pip install 'bn-lenet[ray]' "
                        "(or pip install ray)") from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray's own connect retries for minutes: try the TCP port first, bounded."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto":
        return
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise UserError(f"--ray-address {address}: cannot reach a Ray cluster there ({getattr(e, 'strerror', None) or e}); "
                        f"give HOST:PORT of a running head node (`ray start --head`), or leave --ray-address out "
                        f"to start a local instance") from None


def connect_ray(address, cpus: int):
    """Connect to ``address`` or start a local instance (localhost only, no dashboard). Returns ray."""
    ray = import_ray()
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ... by version
            raise UserError(f"--ray-address {address}: could not connect ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    else:
        # The local workers import this very code, even when another bn_lenet is installed in the venv.
        # Ray's processes take the environment they start with; ours is restored after.
        saved = os.environ.get("PYTHONPATH")
        package_root = str(Path(__file__).resolve().parents[2])
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, saved) if p)
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                     configure_logging=False)
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
    return ray


def _ray_task(task: dict) -> dict:
    import torch
    torch.set_num_threads(task["threads"])
    # This Ray worker process trains: on CPU, glibc keeps the memory each step frees (process-wide: ~1,000
    # fewer page faults per step, the same numbers; bn_lenet/training/process.py).
    process.keep_freed_memory(task["cfg"].train.device)
    return execute(task, log=lambda _: None)


def run_ray(ray, tasks: list, threads: int, on_result) -> bool:
    """Run the tasks as Ray tasks of ``threads`` CPUs each. False if stopped by Ctrl-C."""
    remote = ray.remote(num_cpus=threads, max_retries=RETRIES)(_ray_task)
    pending = {remote.remote(dict(task, threads=threads)): task for task in tasks}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                task = pending.pop(ref)
                try:
                    on_result(ray.get(ref))
                except Exception as e:  # retries used up (the worker died each time), or a bug in a task
                    on_result({"dir": task["dir"], "point": task["point"], "seed": task["seed"], "status": "failed",
                               "message": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                               "trained": True})
        return True
    except KeyboardInterrupt:
        for ref in pending:  # each run stops where it is; its finished epochs are on disk
            ray.cancel(ref)
        return False
    finally:
        ray.shutdown()
