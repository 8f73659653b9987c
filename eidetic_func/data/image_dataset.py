"""In-memory uint8 images viewed as a standardized (optionally pixel-permuted) dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from eidetic_func.core.errors import ShapeError


class ImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """A view of in-memory uint8 images: item ``i`` is ``(x, y)``.

    - ``x``: float32 ``(C, H, W)``, ``(images[index[i]] / 255 − mean) / std`` per channel,
      with the ``H·W`` pixel positions reordered by ``permutation`` (the same for every
      channel) when one is given: ``x.flatten(1) == standardized.flatten(1)[:, permutation]``.
    - ``y``: int64 scalar, ``labels[i]`` (already remapped to the task's head).

    ``images`` is shared, never copied or written to: do not modify it in place. Every
    other tensor (labels, index, permutation, mean, std) lives on ``images``' device, so
    items come out there: :meth:`to` moves a dataset, e.g. onto the GPU it trains on.
    Batched fetches (``__getitems__``, used by ``DataLoader``) index and standardize a
    whole batch at once.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        index: Tensor | None = None,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        permutation: Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ShapeError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        device = images.device
        index = torch.arange(len(images)) if index is None else index
        index = index.to(device, torch.int64)
        if labels.dim() != 1 or labels.shape != index.shape:
            raise ShapeError(
                f"labels must be 1-D with one label per item ({len(index)}), "
                f"got {tuple(labels.shape)}"
            )
        channels, height, width = images.shape[1:]
        if len(mean) not in (1, channels) or len(std) not in (1, channels) or min(std) <= 0:
            raise ShapeError(
                f"mean/std need 1 or {channels} entries and std > 0, got {mean}, {std}"
            )
        if permutation is not None and not torch.equal(
            permutation.sort().values.cpu(), torch.arange(height * width)
        ):
            raise ShapeError(f"permutation must be a permutation of range({height * width})")
        self.images = images
        self.labels = labels.to(device, torch.int64)
        self.index = index
        self.permutation = None if permutation is None else permutation.to(device)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, device=device).view(-1, 1, 1)
        self._std = torch.tensor(self.std, device=device).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int | Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Item ``i``; or, for a sequence (or 1-D tensor) of positions, those items stacked
        (:meth:`batch`), as :func:`~eidetic_func.data.loaders.batch_loader` fetches them."""
        if isinstance(i, int):
            return self._standardize(self.images[self.index[i]].unsqueeze(0))[0], self.labels[i]
        return self.batch(torch.as_tensor(i, dtype=torch.int64, device=self.images.device))

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        """Items ``indices``, fetched as one batch (``DataLoader`` collates them back)."""
        x, y = self.batch(torch.as_tensor(indices, dtype=torch.int64, device=self.images.device))
        return list(zip(x.unbind(0), y.unbind(0)))

    def batch(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Items ``positions`` stacked: ``x`` (B, C, H, W) float32, ``y`` (B,) int64."""
        return self._standardize(self.images[self.index[positions]]), self.labels[positions]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """Every item stacked (a fresh copy): ``x`` (N, C, H, W) float32, ``y`` (N,) int64."""
        return self.batch(torch.arange(len(self)))

    def to(self, device: torch.device | str) -> ImageDataset:
        """This dataset on ``device``: ``self`` if it is there already (nothing is copied),
        else the same view of a copy of its images there."""
        if self.images.device == torch.empty(0, device=device).device:  # "cuda" → "cuda:0"
            return self
        return self.viewing(self.images.to(device))

    def viewing(self, images: Tensor) -> ImageDataset:
        """The same view (items, labels, standardization, permutation) of ``images``, a copy
        of this dataset's images (e.g. on another device), and on their device."""
        return ImageDataset(
            images,
            self.labels,
            index=self.index,
            mean=self.mean,
            std=self.std,
            permutation=self.permutation,
        )

    def subset(self, positions: Tensor) -> ImageDataset:
        """The items at ``positions`` (of this dataset), sharing its images."""
        return ImageDataset(
            self.images,
            self.labels[positions],
            index=self.index[positions],
            mean=self.mean,
            std=self.std,
            permutation=self.permutation,
        )

    def _standardize(self, u8: Tensor) -> Tensor:
        x = u8.to(torch.float32).div_(255.0).sub_(self._mean).div_(self._std)
        if self.permutation is None:
            return x
        return x.flatten(2)[:, :, self.permutation].view(x.shape)

    def __repr__(self) -> str:
        perm = "" if self.permutation is None else ", permuted"
        return f"ImageDataset({len(self)} items of {tuple(self.images.shape[1:])}{perm})"
