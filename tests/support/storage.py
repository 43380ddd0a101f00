"""Small builders shared by the storage tests (tiny PNGs and NewGeneration values)."""

from __future__ import annotations

import io
import threading

from PIL import Image

from storage import NewGeneration


def png_bytes(color=(255, 0, 0), size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def generation(
    seed: int = 0, color=(255, 0, 0), trajectory: bytes | None = b"trajectory", **overrides
) -> NewGeneration:
    fields = dict(
        seed=seed,
        model_id="tiny-shapes",
        adapter_version=None,
        sampler_settings={"steps": 4, "guidance_scale": 7.5, "eta": 1.0},
        image_png=png_bytes(color),
        trajectory=trajectory,
    )
    fields.update(overrides)
    return NewGeneration(**fields)


def stop_process(proc) -> None:
    """Kill a test's child process if it still runs and close its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def run_threads(target, count: int, timeout: float = 120.0) -> list[BaseException]:
    """Call `target(i)` for i in range(count) on `count` threads released together; returns what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - collected and reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return errors
