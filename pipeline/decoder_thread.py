"""The decoder side of the stage 1 engine: threads that decode whole videos into frame chunks.

Each :class:`DecoderThread` takes video indices from a shared work queue, decodes each video
with :class:`pipeline.video.VideoReader` and sends typed messages to the one bounded queue the
consumer (:func:`pipeline.featurize.iter_features`) batches from. A failure of one video is a
message, never an exception in the consumer; a bug outside any one video is handed over too,
for the consumer to re-raise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.contracts import ExtractorConfig, VideoInfo
from pipeline.errors import DecodeError
from pipeline.video import FrameChunk, VideoReader

log = logging.getLogger(__name__)

CHUNK_FRAMES = 16
"""Frames per message a decoder sends."""
DECODER_NICE = 10
"""Nice increment of the decoder threads (see ``_lower_thread_priority``)."""
DECODER_THREAD_TYPE = "AUTO"
"""FFmpeg's threading inside each decoder (see docs/cluster.md, "Decoder threads")."""
POLL_SEC = 0.1
"""How often a blocked decoder or consumer re-checks cancellation and the stall watchdog."""


# --------------------------------------------------------------------------- the messages


@dataclass(frozen=True)
class Frames:
    """The next chunk of video ``index``'s frames."""

    decoder: DecoderThread
    index: int
    chunk: FrameChunk


@dataclass(frozen=True)
class Decoded:
    """Video ``index`` is fully decoded: every chunk of it was sent before this."""

    decoder: DecoderThread
    index: int
    info: VideoInfo


@dataclass(frozen=True)
class Failed:
    """Video ``index`` could not be decoded (its chunks sent so far are void).

    ``transient``: a failure of this run (out of memory), not of the file's content.
    """

    decoder: DecoderThread
    index: int
    reason: str
    transient: bool = False


@dataclass(frozen=True)
class OutOfWork:
    """The decoder found no video left to take and has exited."""

    decoder: DecoderThread


@dataclass(frozen=True)
class Crashed:
    """A bug outside any one video stopped the decoder; the consumer re-raises ``error``."""

    decoder: DecoderThread
    error: BaseException


Message = Frames | Decoded | Failed | OutOfWork | Crashed
"""Everything a decoder sends to the consumer, in the order: ``Frames``… then ``Decoded`` or
``Failed`` per video, and finally ``OutOfWork`` (or ``Crashed``)."""


# --------------------------------------------------------------------------- the thread


def _reason(error: Exception, path: str) -> str:
    text = str(error)
    return text[len(path) + 2 :] if text.startswith(f"{path}: ") else text


def _lower_thread_priority() -> None:
    """Give the calling (decoder) thread a lower CPU priority than inference, on Linux.

    Called by a decoder the first time it finds the queue full, i.e. once the backbone is
    the bottleneck: its intra-op threads wait on each other at every op, so a decoder
    preempting one of them stalls all of them, while the decoder has a queue of chunks to
    absorb delays. While decoding is the bottleneck (a GPU, a small input) decoders keep
    their normal priority: on a shared machine a niced decoder would lose its share of the
    CPU to every other process. One-way, because raising a priority again needs privileges.
    """
    if sys.platform == "linux":  # per-thread nice values are a Linux feature
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODER_NICE)


class DecoderThread(threading.Thread):
    """One decoder thread: takes video indices into ``paths`` from ``work`` until none is left.

    Sends :data:`Message` objects to ``out``. :attr:`busy` is ``(video index, since)`` while
    the thread waits on the reader (not while it waits for queue space), for the consumer's
    stall watchdog; the consumer sets :attr:`abandoned` when it gives up on the thread.
    """

    def __init__(
        self,
        paths: Sequence[str],
        work: queue.SimpleQueue,
        config: ExtractorConfig,
        out: queue.Queue,
        stop: threading.Event,
    ):
        super().__init__(name="vrnn-decode", daemon=True)
        self.paths, self.work, self.config, self.out, self.stop = paths, work, config, out, stop
        self.abandoned = False  # set by the consumer when it gives up on this thread
        self.busy: tuple[int, float] | None = None
        self.yielding = False  # lowered its priority (once the queue was found full)

    def put(self, message: Message) -> bool:
        """Queue one message; False once the run is stopped or this thread abandoned."""
        self.busy = None
        while not (self.stop.is_set() or self.abandoned):
            try:
                self.out.put(message, timeout=POLL_SEC)
            except queue.Full:
                if not self.yielding:  # inference is the bottleneck: stop competing with it
                    self.yielding = True
                    _lower_thread_priority()
                continue
            if isinstance(message, Frames | Decoded | Failed):
                self.busy = (message.index, time.monotonic())
            return True
        return False

    def run(self) -> None:
        try:
            while True:
                try:
                    i = self.work.get_nowait()
                except queue.Empty:
                    self.put(OutOfWork(self))
                    return
                self.busy = (i, time.monotonic())
                if not self.decode(i):
                    return
        except BaseException as e:  # a bug: hand it to the consumer, which re-raises it
            self.put(Crashed(self, e))

    def decode(self, i: int) -> bool:
        """Send video ``i``'s chunks and its outcome; False when the run is over for us."""
        path, config = self.paths[i], self.config
        reader = VideoReader(
            Path(path),
            size=config.input_size,
            resize=config.resize,
            fps=config.fps,
            thread_type=DECODER_THREAD_TYPE,
        )
        try:
            for chunk in reader.chunks(CHUNK_FRAMES):
                if not self.put(Frames(self, i, chunk)):
                    return False
        except DecodeError as e:
            return self.put(Failed(self, i, _reason(e, path)))
        except MemoryError:
            return self.put(Failed(self, i, "out of memory while decoding", transient=True))
        except Exception as e:
            # An unexpected error on one file (a decoder or library bug) must not stall
            # a whole batch night after night: record it loudly and go on.
            log.exception("unexpected error while decoding %s", path)
            return self.put(Failed(self, i, f"unexpected decoder error ({type(e).__name__}: {e})"))
        return self.put(Decoded(self, i, reader.info))
