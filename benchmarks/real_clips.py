"""Real-sized H.264 clips, and what plain PyAV decodes of them: the decode-bound benchmarks'
common ground (no TensorFlow, no Dask, so it also runs where only PyAV is installed)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def make_real_sized_videos(root: Path, count: int, frames: int) -> list[Path]:
    """H.264 clips, ``count`` at 640×360 and ``count`` at 1280×720, fine texture and motion.

    A 4-px noise texture pans under a moving shading field, so every macroblock changes
    every frame (real footage-like bitrates, not flat colour that decodes for free).
    """
    import av

    paths = []
    for width, height in ((640, 360), (1280, 720)):
        ys, xs = np.mgrid[0:height, 0:width]
        shade = (60 * np.sin(xs / 37.0) * np.cos(ys / 23.0)).astype(np.int16)[..., None]
        for i in range(count):
            rng = np.random.default_rng(1000 * width + i)
            texture = rng.integers(32, 224, (height // 4 + 64, width // 4 + 64, 3), np.uint8)
            texture = np.repeat(np.repeat(texture, 4, axis=0), 4, axis=1)
            path = root / f"real{width}x{height}_{i}.mp4"
            with av.open(str(path), "w") as container:
                stream = container.add_stream("libx264", rate=30, options={"preset": "veryfast"})
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                for t in range(frames):
                    dx, dy = (3 * t) % 256, (2 * t) % 256
                    image = texture[dy : dy + height, dx : dx + width] + np.roll(shade, 5 * t, 1)
                    image = np.clip(image, 0, 255).astype(np.uint8)
                    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                    container.mux(stream.encode(frame))
                container.mux(stream.encode(None))
            paths.append(path)
    return paths


def raw_decode_fps(videos: list[Path], threads: int) -> float:
    """Frames/s of plain PyAV decoding, ``threads`` Python threads each taking whole files."""
    import threading

    import av

    todo, lock, frames = list(videos), threading.Lock(), [0]

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                path = todo.pop()
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                count = sum(1 for _ in container.decode(stream))
            with lock:
                frames[0] += count

    started = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return frames[0] / (time.perf_counter() - started)


def read_as_extract(path: Path, size: int) -> int:
    """Decode and scale one file to ``size`` as ``extract``'s decoders do; frames read."""
    from pipeline.decoder_thread import CHUNK_FRAMES, DECODER_THREAD_TYPE
    from pipeline.video import VideoReader

    reader = VideoReader(path, size=size, thread_type=DECODER_THREAD_TYPE)
    return sum(len(chunk.frames) for chunk in reader.chunks(CHUNK_FRAMES))
