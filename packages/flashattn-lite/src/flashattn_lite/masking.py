"""Which keys a query may see: causal and sliding-window masks as one band.

Every mask this package supports (none, causal bottom-right, causal top-left, flash-attn's
sliding window) is a *band* around a shifted diagonal. Query row ``i`` may attend key
column ``j`` exactly when

    -left <= j - i - diagonal <= right

where ``diagonal`` shifts the band (``seqlen_k - seqlen_q`` for flash-attn's
bottom-right alignment, ``0`` for SDPA's top-left ``is_causal``) and ``left`` /
``right`` are ``None`` when that side is unbounded. Both the tiled PyTorch path and the
Triton kernels read the same ``Band`` to decide which key blocks to visit at all and which
of the visited blocks need an element-wise mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Band:
    """Allowed keys of row ``i``: ``diagonal + i - left <= j <= diagonal + i + right``."""

    diagonal: int
    left: int | None = None  # None: unbounded towards the first key
    right: int | None = None  # None: unbounded towards the last key

    @property
    def is_full(self) -> bool:
        return self.left is None and self.right is None

    def key_range(self, row_start: int, row_end: int, seqlen_k: int) -> tuple[int, int]:
        """Half-open ``[lo, hi)`` of keys seen by at least one row in ``[row_start, row_end)``."""
        lo = 0 if self.left is None else max(0, row_start + self.diagonal - self.left)
        last_row = row_end - 1
        hi = (
            seqlen_k
            if self.right is None
            else min(seqlen_k, last_row + self.diagonal + self.right + 1)
        )
        return lo, max(lo, hi)

    def query_range(self, key_start: int, key_end: int, seqlen_q: int) -> tuple[int, int]:
        """Half-open ``[lo, hi)`` of queries seeing a key in ``[key_start, key_end)``."""
        lo = 0 if self.right is None else max(0, key_start - self.diagonal - self.right)
        last_key = key_end - 1
        hi = (
            seqlen_q
            if self.left is None
            else min(seqlen_q, last_key - self.diagonal + self.left + 1)
        )
        return lo, max(lo, hi)

    def needs_mask(self, row_start: int, row_end: int, key_start: int, key_end: int) -> bool:
        """False when every (row, key) of the tile is inside the band (no masking needed)."""
        last_row, last_key = row_end - 1, key_end - 1
        if self.left is not None and key_start < last_row + self.diagonal - self.left:
            return True
        return self.right is not None and last_key > row_start + self.diagonal + self.right

    def every_row_sees_a_key(
        self, row_start: int, row_end: int, key_start: int, key_end: int
    ) -> bool:
        """True when each row of the tile has at least one allowed key in it.

        Row ``i``'s keys ``[diagonal + i - left, diagonal + i + right]`` form a
        non-empty interval that moves right with ``i``, so the first row is the one that
        can fall before ``key_start`` and the last the one that can start past the tile.
        Then no row needs the empty-row guards (an all ``-inf`` row).
        """
        if row_end <= row_start:
            return True
        if key_end <= key_start:
            return False
        if self.right is not None and row_start + self.diagonal + self.right < key_start:
            return False
        return self.left is None or row_end - 1 + self.diagonal - self.left < key_end

    def first_masked_key(self, row_start: int, key_start: int) -> int:
        """The first key column of a tile (rows from ``row_start``, keys from
        ``key_start``) that may be blocked for some row.

        With only the right side bounded (causal), every row sees all keys up to
        ``row_start + diagonal + right``: a decoding step's few new queries against a
        cache need a mask on their last few keys only. Otherwise ``key_start``.
        """
        if self.left is None and self.right is not None:
            return max(key_start, row_start + self.diagonal + self.right + 1)
        return key_start

    def blocked(
        self,
        row_start: int,
        row_end: int,
        key_start: int,
        key_end: int,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """``~allowed(...)``, shared between calls: treat it as read-only.

        The pattern depends only on the tile's size and its offsets to the band, so
        every layer of a model (and every decoding step, whose new queries sit at the
        same place relative to the diagonal) reuses one small tensor instead of building
        it with three ops per tile.
        """
        upper, lower = self._tile_bounds(row_start, key_start)
        rows, cols = row_end - row_start, key_end - key_start
        return _blocked_pattern(rows, cols, upper, lower, torch.device(device))

    def allowed(
        self,
        row_start: int,
        row_end: int,
        key_start: int,
        key_end: int,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Boolean ``(row_end - row_start, key_end - key_start)`` tile, True where allowed.

        In tile coordinates (``ii = i - row_start``, ``jj = j - key_start``) the band is
        ``low <= jj - ii <= high``: a triangle cut on each bounded side (``tril``/``triu``
        with that offset), two small ops instead of index grids.
        """
        upper, lower = self._tile_bounds(row_start, key_start)
        return _allowed_pattern(row_end - row_start, key_end - key_start, upper, lower, device)

    def _tile_bounds(self, row_start: int, key_start: int) -> tuple[int | None, int | None]:
        """The band's sides in tile coordinates, ``(upper, lower)`` with ``None`` unbounded:
        allowed where ``lower <= jj - ii <= upper``."""
        offset = row_start + self.diagonal - key_start
        upper = None if self.right is None else offset + self.right
        lower = None if self.left is None else offset - self.left
        return upper, lower


def _allowed_pattern(
    rows: int, cols: int, upper: int | None, lower: int | None, device: torch.device | str
) -> torch.Tensor:
    """Boolean ``(rows, cols)``, True where ``lower <= jj - ii <= upper`` (None: no bound)."""
    ok = torch.ones(rows, cols, dtype=torch.bool, device=device)
    if upper is not None:
        ok.tril_(upper)
    if lower is not None:
        ok.triu_(lower)
    return ok


@functools.lru_cache(maxsize=64)  # at most 64 tiles of <= 256 x 256 bools: 4 MiB
def _blocked_pattern(
    rows: int, cols: int, upper: int | None, lower: int | None, device: torch.device
) -> torch.Tensor:
    """``~_allowed_pattern(...)``, cached: every caller shares the returned tensor."""
    return _allowed_pattern(rows, cols, upper, lower, device).logical_not_()


def flash_band(seqlen_q: int, seqlen_k: int, causal: bool, window_size: tuple[int, int]) -> Band:
    """flash-attn's convention: bottom-right aligned, ``-1`` meaning unbounded.

    ``causal=True`` is the window ``(left, 0)``: each query sees itself and the past, with
    the last query aligned to the last key (flash-attn >= 2.1).
    """
    left, right = window_size
    if causal:
        right = 0
    return Band(
        diagonal=seqlen_k - seqlen_q,
        left=None if left < 0 else left,
        right=None if right < 0 else right,
    )


def sdpa_band(is_causal: bool) -> Band:
    """``F.scaled_dot_product_attention``'s ``is_causal``: lower triangle, top-left aligned."""
    return Band(diagonal=0, left=None, right=0) if is_causal else Band(diagonal=0)
