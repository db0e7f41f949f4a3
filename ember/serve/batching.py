"""Dynamic batching: requests for one model wait in a bounded queue; a worker takes what
is there (up to a maximum batch, waiting at most a short delay for more), concatenates
requests of the same shape along the batch dim, makes one native call, and splits the result.

A model can be batched when every input and output starts with the same symbolic dim (the
batch) and no other dim uses it. Other models still go through the queue, one call per request.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..ir.symbolic import free_symbols, parse_dim


class QueueFull(Exception):
    """The model's queue is at its bound; the server answers 503."""


@dataclass
class BatchConfig:
    max_batch_size: int = 32      # rows (sum of batch dims) per call; 1 disables batching
    max_delay_ms: float = 2.0     # how long a call may wait for more requests
    max_queue: int = 256          # requests waiting per model before 503


def batch_symbol(inputs, outputs, sym_ranges=None) -> tuple[str | None, int | None]:
    """The batch dim's symbol and its upper bound, or (None, None) if the model has none.

    >>> batch_symbol(model.inputs, model.outputs)
    ('batch', 64)
    """
    firsts = {str(s.shape[0]) if s.shape else None for s in (*inputs, *outputs)}
    if len(firsts) != 1:
        return None, None
    name = firsts.pop()
    if name is None or name.isdigit() or not name.isidentifier():
        return None, None
    for s in (*inputs, *outputs):
        for d in s.shape[1:]:
            if not isinstance(d, int) and name in free_symbols(parse_dim(d)):
                return None, None
    hi = (sym_ranges or {}).get(name, (1, None))[1]
    return name, hi


def run_batch(model, requests: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """One model call for several requests whose inputs agree except in the batch dim.

    >>> ys = run_batch(model, [[x1], [x2]])   # == [model.run_numpy([x1]), model.run_numpy([x2])]
    """
    if len(requests) == 1:
        return [model.run_numpy(requests[0])]
    cat = [np.concatenate(parts, axis=0) for parts in zip(*requests)]
    cuts = np.cumsum([r[0].shape[0] for r in requests])[:-1]
    per_out = [np.split(o, cuts, axis=0) for o in model.run_numpy(cat)]
    return [list(parts) for parts in zip(*per_out)]


def batch_key(arrays: list[np.ndarray]) -> tuple:
    """What must agree between requests that share a call: trailing shapes and dtypes."""
    return tuple((a.shape[1:], a.dtype.str) for a in arrays)


@dataclass
class _Item:
    arrays: list[np.ndarray]
    rows: int
    future: asyncio.Future
    key: tuple  # what must agree to share a call: trailing shapes and dtypes


class Batcher:
    """One model's queue and worker. ``await submit(arrays)`` returns its outputs.

    >>> b = Batcher("mlp", compiled, BatchConfig()); await b.start()
    >>> outs = await b.submit([x])
    """

    def __init__(self, name: str, model, config: BatchConfig, metrics=None):
        self.name, self.model, self.config, self.metrics = name, model, config, metrics
        native = getattr(model, "native", None)
        sym, hi = batch_symbol(model.inputs, model.outputs, getattr(native, "sym_ranges", None))
        self.batchable = sym is not None and config.max_batch_size > 1
        self.max_rows = min(config.max_batch_size, hi) if hi else config.max_batch_size
        self._queue: asyncio.Queue | None = None
        self._held: _Item | None = None  # taken from the queue but did not fit the last batch
        self._worker: asyncio.Task | None = None
        self.pending = 0  # accepted requests not answered yet
        # One call at a time per model: the native code already spreads a call over the cores.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ember-{name}")
        self.calls = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.config.max_queue)
        self._worker = asyncio.create_task(self._run(), name=f"ember-batcher-{self.name}")

    def depth(self) -> int:
        return (self._queue.qsize() if self._queue else 0) + (self._held is not None)

    async def submit(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        fut = asyncio.get_running_loop().create_future()
        rows = arrays[0].shape[0] if self.batchable else 1
        key = batch_key(arrays) if self.batchable else ()
        try:
            self._queue.put_nowait(_Item(arrays, rows, fut, key))
        except asyncio.QueueFull:
            raise QueueFull(f"model {self.name!r} has {self.config.max_queue} requests waiting; "
                            f"try again later") from None
        self.pending += 1
        try:
            return await fut
        finally:
            self.pending -= 1

    async def _next(self, timeout: float | None) -> _Item | None:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        if timeout is not None and timeout <= 0:
            return None
        get = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({get}, timeout=timeout)
        if get in done:
            return get.result()
        get.cancel()
        try:  # it may have taken an item just before the cancel landed: keep it
            return await get
        except asyncio.CancelledError:
            return None

    async def _gather(self) -> list[_Item]:
        first = await self._next(None)
        batch, rows = [first], first.rows
        if not self.batchable:
            return batch
        deadline = time.monotonic() + self.config.max_delay_ms / 1000
        while rows < self.max_rows:
            item = await self._next(deadline - time.monotonic())
            if item is None:
                break
            if rows + item.rows > self.max_rows:
                self._held = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            groups: dict[tuple, list[_Item]] = {}
            for item in batch:
                groups.setdefault(item.key, []).append(item)
            for items in groups.values():
                live = [i for i in items if not i.future.done()]  # client gone: skip it
                if not live:
                    continue
                try:
                    outs = await loop.run_in_executor(self._pool, self._call, live)
                except Exception as e:  # noqa: BLE001 - handed to each waiting request
                    for i in live:
                        if not i.future.done():
                            i.future.set_exception(e)
                    continue
                for i, o in zip(live, outs):
                    if not i.future.done():
                        i.future.set_result(o)

    def _call(self, items: list[_Item]) -> list[list[np.ndarray]]:
        """One native call for ``items`` (in the worker thread); outputs split per item."""
        t0 = time.perf_counter()
        outs = run_batch(self.model, [i.arrays for i in items])
        self.calls += 1
        if self.metrics is not None:
            self.metrics.inference.labels(self.name).observe(time.perf_counter() - t0)
            self.metrics.batch_requests.labels(self.name).observe(len(items))
        return outs

    async def drain(self) -> None:
        """Wait until every accepted request has its answer."""
        while self.pending:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.drain()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)
