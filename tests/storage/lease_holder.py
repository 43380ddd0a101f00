"""A process that takes a database lease and keeps renewing it until it is killed (for the SIGKILL tests).

    PYTHONPATH=<repo root> python tests/storage/lease_holder.py DATA_DIR DATABASE_URL|- NAME HOLDER TTL_S

Prints "acquired" (and flushes) once it holds the lease, then renews it every TTL_S / 4 seconds; exits with
status 3 and prints "busy" if the lease is held by someone else, with 4 and "lost" if a renewal fails.
"""

from __future__ import annotations

import sys
import time

from storage import Repository


def main(data_dir: str, url: str, name: str, holder: str, ttl_s: float) -> int:
    repo = Repository(data_dir, None if url == "-" else url)
    if not repo.acquire_lease(name, holder, ttl_s):
        print("busy", flush=True)
        return 3
    print("acquired", flush=True)
    while True:
        time.sleep(ttl_s / 4)
        if not repo.renew_lease(name, holder, ttl_s):
            print("lost", flush=True)
            return 4


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])))
