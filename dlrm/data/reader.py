"""Read a split-binary dataset in whole batches: contiguous reads, no per-sample Python.

    reader = SplitBinaryReader(spec, "train", 65536, shuffle=True, seed=7, local_slice=(rank, world))
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        for batch in reader:       # Batch(numerical [B_local, N], categorical [B, F], label [B_local], ...)
            ...

A batch is rows [i*B, (i+1)*B) of the split: one contiguous slice of each file, mapped and
copied once into the batch's tensors (converting dtype on the way), no per-sample Python. Shuffling
permutes the ORDER of batches per epoch (from seed and epoch), never the rows inside one, so
reads stay sequential. Worker threads keep `prefetch` batches being read ahead.

Resume: the data position is (epoch, next position in that epoch's order). A reader built with
`start_batch=k` and set to the same epoch yields exactly positions k.. of that epoch, in the same
order; `start_batch` applies to the first iteration only, later epochs start at 0.

Model parallel embeddings need every id of the global batch on every rank, data parallel MLPs
only this rank's rows: with `local_slice=(rank, world)` numerical and label hold only this rank's
contiguous part of the global batch (the first B % world ranks get one row more), categorical
the whole batch.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from dlrm.data.spec import Chunk, FeatureSpec
from dlrm.data.writer import check_ids as _check_ids
from dlrm.errors import DataError, UserError


@dataclass
class Batch:
    """One batch. B: global batch rows, B_local: this rank's rows, N numerical, F categorical read.

    numerical:   [B_local, N] as stored (float16 in NVIDIA's layout), or None when not read. Cast
                 where it is used (`.to(device).float()`): on a GPU the cast is free and the
                 host-to-device copy half the size; converting here cost the reader a third of its time
    categorical: int32 [B, H] ids, columns in the order asked for, each feature's `hotness` ids
                 side by side (H = F for one-hot data; -1 marks padding of `padded` features);
                 [B, 0] when none is read.
                 int32: embedding lookups take it and it halves the bytes moved to the device
                 against int64. Stored feature-major (a [B, F] view of a contiguous [F, B]
                 buffer, strides (1, B)): each feature's ids are contiguous, as per-table
                 sharding wants; call .contiguous() where row-major is needed.
    label:       [B_local] as stored (bool), or None when not read
    index:       the batch's number in file order: rows [index*batch_size, ...) of the split
    position:    its place in this epoch's (possibly shuffled) order; resume at position + 1
    """

    numerical: torch.Tensor | None
    categorical: torch.Tensor
    label: torch.Tensor | None
    index: int
    position: int


def local_rows(b: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of rank `rank`'s rows in a batch of b rows: the first b % world ranks get one more."""
    base, extra = divmod(b, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def check_labels(labels: np.ndarray, first_row: int, file) -> None:
    """Labels [B] must be 0 or 1: a byte 2 in a bool file would silently train as a click.
    One reduction per batch (as bytes for bool); the slow path runs only on failure."""
    as_bytes = labels.view(np.uint8) if labels.dtype == np.bool_ else None
    if labels.size == 0 or (as_bytes is not None and as_bytes.max() <= 1):
        return
    wrong = as_bytes > 1 if as_bytes is not None else (labels != 0) & (labels != 1)
    if as_bytes is None and not wrong.any():
        return
    bad = int(np.flatnonzero(wrong)[0])
    value = (as_bytes if as_bytes is not None else labels)[bad].item()
    raise DataError(f"{file}: label {value} at row {first_row + bad} is not 0 or 1")


def check_finite(block: np.ndarray, features: list[str], first_row: int, file_of) -> None:
    """Numerical features [B, N] must be finite: one NaN or inf trains a NaN model.

    On the bits, one masked max per batch (about the cost of the copy; np.isfinite on float16 is
    25x that): a value is NaN or inf exactly when all its exponent bits are set."""
    if block.dtype.kind != "f" or block.size == 0:
        return
    info = np.finfo(block.dtype)
    exponent = ((1 << info.nexp) - 1) << info.nmant
    if (np.ascontiguousarray(block).view(f"u{block.dtype.itemsize}") & exponent).max() != exponent:
        return
    row, col = (int(i[0]) for i in np.nonzero(~np.isfinite(block)))
    raise DataError(f"{file_of(features[col])}: feature {features[col]}: {block[row, col].item()} at row {first_row + row} "
                    f"is not a finite number")


class SplitBinaryReader:
    """Batches of one split of `spec`; see the module docstring. Iterate it once per epoch."""

    def __init__(self, spec: FeatureSpec, split: str, batch_size: int, *, categorical: list[str] | None = None,
                 numerical: bool = True, label: bool = True, local_slice: tuple[int, int] | None = None,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False, prefetch: int = 2,
                 check_ids: bool = True, start_batch: int = 0, max_batches: int = 0):
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if prefetch < 0 or max_batches < 0 or start_batch < 0:
            raise UserError(f"prefetch, max_batches and start_batch must be >= 0, got {prefetch}, {max_batches}, {start_batch}")
        self.spec, self.split, self.batch_size = spec, split, batch_size
        self.rows = spec.num_rows(split)  # checks every file's size first
        names = list(spec.categorical) if categorical is None else list(categorical)
        unknown = [f for f in names if f not in spec.cardinalities]
        if unknown:
            raise UserError(f"{spec.path}: categorical features {unknown} not in the spec (have {spec.categorical})")
        self.categorical = names
        self.want_numerical = numerical
        self.hotness = [spec.hotness.get(f, 1) for f in names]  # columns per feature in `categorical`
        self.read_numerical = bool(numerical and spec.numerical)
        self.read_label = label
        if local_slice is not None:
            rank, world = local_slice
            if not (world >= 1 and 0 <= rank < world):
                raise UserError(f"local_slice must be (rank, world) with 0 <= rank < world, got {local_slice}")
        self.local_slice = local_slice
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.prefetch, self.check_ids = prefetch, check_ids
        self.max_batches = max_batches
        self.epoch = 0
        full, rest = divmod(self.rows, batch_size)
        self.num_file_batches = full + (1 if rest and not drop_last else 0)
        if start_batch > len(self):
            raise UserError(f"start_batch {start_batch} is past the end of the epoch ({len(self)} batches of "
                            f"{batch_size} rows in {spec.root}/{split})")
        self.start_batch = start_batch

        # What to read: (chunk, columns wanted, where they go). Numerical features usually share
        # one chunk; a chunk read for one feature is still read whole (rows are contiguous).
        self._cat_chunks = [(spec.chunk_of(split, f), f) for f in names]
        self._num_chunks: list[tuple[Chunk, list[int]]] = []
        if self.read_numerical:
            for chunk in spec.sources[split]:
                cols = [chunk.columns_of(f).start for f in spec.numerical if f in chunk.features]
                if cols:
                    self._num_chunks.append((chunk, cols))
            order = [f for c, cols in self._num_chunks for f in (c.features[i] for i in cols)]
            self._num_perm = [order.index(f) for f in spec.numerical]  # back to channel order
        self._label_chunk = spec.chunk_of(split, spec.label)
        self._sizes: dict = {}  # path -> bytes its map covers (open_files)

    # -- order ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch (capped by max_batches), counting from position 0."""
        return min(self.num_file_batches, self.max_batches) if self.max_batches else self.num_file_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int | None = None) -> np.ndarray:
        """File-order batch indices in the order epoch `epoch` yields them, [len(self)]."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_file_batches)
        else:
            perm = np.arange(self.num_file_batches)
        return perm[: len(self)]

    # -- reading --------------------------------------------------------------------------------
    def open_files(self) -> dict:
        """{path: [rows, features] map} of every file this reader reads, shareable by threads.

        Mapped copy-on-write so numpy and torch see writable arrays (nothing is ever written):
        a batch is then one pass from the page cache into its tensors, where pread would add a
        second copy. The sizes were checked against the spec when the reader was built; a file
        truncated while mapped would kill the process on the next read past its new end (SIGBUS,
        "Bus error", which Python cannot turn into an exception), so every batch first checks the
        sizes again (a stat per file, microseconds) and names the file that shrank.
        """
        chunks = [c for (c, _), _ in self._cat_chunks] + [c for c, _ in self._num_chunks]
        if self.read_label:
            chunks.append(self._label_chunk[0])
        maps: dict = {}
        for c in chunks:
            if c.file not in maps:
                self._sizes[c.file] = self.rows * c.columns * c.dtype.itemsize
                try:
                    maps[c.file] = np.memmap(c.file, c.dtype, "c", shape=(self.rows, c.columns))
                except (OSError, ValueError) as e:
                    raise DataError(f"{c.file}: cannot map {self.rows} rows of {c.columns} x {c.dtype.name}: {e}") from None
        return maps

    def read_batch(self, index: int, position: int = 0, maps: dict | None = None) -> Batch:
        """Batch number `index` in file order; `maps` from open_files() (else mapped for this call)."""
        if not 0 <= index < self.num_file_batches:
            raise IndexError(f"batch {index} of {self.num_file_batches}")
        return self._read(index, position, self.open_files() if maps is None else maps)

    @staticmethod
    def _rows(maps: dict, chunk: Chunk, start: int, count: int) -> np.ndarray:
        """Rows [start, start+count) of a chunk, [count, features] in the file's dtype (a view, no copy)."""
        return maps[chunk.file][start : start + count]

    def _check_sizes(self) -> None:
        for path, size in self._sizes.items():
            try:
                now = os.stat(path).st_size
            except OSError as e:
                raise DataError(f"{path}: gone while training read it ({e.strerror})") from None
            if now < size:
                raise DataError(f"{path}: truncated while training read it ({now} bytes, expected {size}); "
                                f"restore the dataset (a copy or writer still running over it?) and resume")

    def _read(self, index: int, position: int, maps: dict) -> Batch:
        self._check_sizes()  # before any mapped page is touched: a read past a shrunk file is SIGBUS
        start = index * self.batch_size
        b = min(self.batch_size, self.rows - start)
        lo, hi = (0, b) if self.local_slice is None else local_rows(b, *self.local_slice)

        # Ids are gathered feature-major, [F, B]: each feature's ids land in one contiguous row
        # (16x cheaper than scattering into columns of [B, F]); the batch holds its [B, F] view.
        cat = np.empty((sum(self.hotness), b), np.int32)
        j = 0
        for (chunk, cols), name in self._cat_chunks:
            ids = self._rows(maps, chunk, start, b)[:, cols]  # [b, hotness]
            if self.check_ids:  # on the file's (narrow) dtype: the cheapest pass
                _check_ids(name, ids, self.spec.cardinalities[name], start, where=f"{chunk.file}",
                           padded=name in self.spec.padded)
            cat[j : j + ids.shape[1]] = ids.T  # the one copy, widening to int32 on the way
            j += ids.shape[1]

        numerical = None
        if self.read_numerical:
            parts = [self._rows(maps, c, start + lo, hi - lo)[:, cols] if len(cols) < c.columns
                     else self._rows(maps, c, start + lo, hi - lo) for c, cols in self._num_chunks]
            block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            if self._num_perm != list(range(len(self._num_perm))):
                block = block[:, self._num_perm]
            block = np.array(block)
            check_finite(block, self.spec.numerical, start + lo, lambda f: self.spec.chunk_of(self.split, f)[0].file)
            numerical = torch.from_numpy(block)  # as stored: the device casts (half the bytes to move)
        elif self.want_numerical:  # a dataset without numerical features: an empty [B_local, 0]
            numerical = torch.zeros(hi - lo, 0, dtype=torch.float16)

        label = None
        if self.read_label:
            chunk, col = self._label_chunk
            raw = np.array(self._rows(maps, chunk, start + lo, hi - lo)[:, col.start])
            check_labels(raw, start + lo, chunk.file)
            label = torch.from_numpy(raw)
        return Batch(numerical, torch.from_numpy(cat).t(), label, int(index), int(position))

    def __iter__(self) -> "BatchIterator":
        order = self.order()
        first, self.start_batch = self.start_batch, 0  # a resume offset applies to one iteration
        jobs = [(int(order[p]), p) for p in range(first, len(order))]
        return BatchIterator(self, jobs)


class BatchIterator:
    """Yields the reader's batches in order, with `prefetch` batches being read ahead.

    Each batch is read whole by a worker thread (copies, casts and checks release the GIL, so
    batches in flight overlap with each other and with training); prefetch=0 reads inline. An
    error reading a batch is raised here, when that batch is due. `close()` (also run by `with`,
    by exhaustion and when the iterator is dropped) cancels what is queued, waits for reads in
    progress and unmaps the files.
    """

    def __init__(self, reader: SplitBinaryReader, jobs: list[tuple[int, int]]):
        self._reader, self._jobs, self._next = reader, jobs, 0
        self._maps = reader.open_files() if jobs else {}
        self._pool = ThreadPoolExecutor(reader.prefetch, thread_name_prefix=f"dlrm-reader-{reader.split}") \
            if reader.prefetch and jobs else None
        self._pending: deque[Future] = deque()
        self._submitted = 0
        self._fill()

    def _fill(self) -> None:
        while self._pool is not None and len(self._pending) < self._reader.prefetch and self._submitted < len(self._jobs):
            self._pending.append(self._pool.submit(self._reader.read_batch, *self._jobs[self._submitted], maps=self._maps))
            self._submitted += 1

    def __iter__(self) -> "BatchIterator":
        return self

    def __len__(self) -> int:
        return len(self._jobs) - self._next

    def __next__(self) -> Batch:
        if self._next >= len(self._jobs):
            self.close()
            raise StopIteration
        try:
            if self._pool is None:
                batch = self._reader.read_batch(*self._jobs[self._next], maps=self._maps)
            else:
                batch = self._pending.popleft().result()
                self._fill()
        except BaseException:
            self.close()
            raise
        self._next += 1
        return batch

    def close(self) -> None:
        """Stop reading; idempotent."""
        self._next = len(self._jobs)
        if self._pool is not None:
            for f in self._pending:
                f.cancel()
            self._pool.shutdown(wait=True)  # reads in progress still use the maps
            self._pool = None
        self._pending.clear()
        self._maps = {}

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
