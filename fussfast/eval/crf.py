"""Dense CRF refinement of per-pixel class probabilities at evaluation (STEGO reports mIoU with
and without it): Krähenbühl and Koltun's fully connected CRF through the ``pydensecrf2`` binding
(``pip install "fussfast[crf]"``), imported only when a CRF runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DenseCRF:
    """Mean-field inference with a smoothness kernel (Gaussian in position) and an appearance
    kernel (bilateral: position and colour), each with Potts compatibility. The defaults are
    STEGO's (src/crf.py): 10 iterations, smoothness width 1 px and weight 3, appearance widths
    67 px and 3 colour levels and weight 4. ``alpha`` is how an unsupervised model turns its
    cluster cosines into the probabilities the CRF starts from (``softmax(alpha · cos)``, STEGO:
    2; ``LocalModel.log_probs``)."""

    iterations: int = 10
    gaussian_xy: float = 1.0
    gaussian_weight: float = 3.0
    bilateral_xy: float = 67.0
    bilateral_rgb: float = 3.0
    bilateral_weight: float = 4.0
    alpha: float = 2.0

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """``image`` ``[H, W, 3]`` uint8 RGB and ``probs`` ``[K, H, W]`` (each pixel's summing to 1)
        → the CRF's marginals ``[K, H, W]`` float32."""
        try:
            import pydensecrf.densecrf as dcrf
            from pydensecrf.utils import unary_from_softmax
        except ImportError:
            raise ImportError('config key \'eval.crf\' needs pydensecrf2: pip install "fussfast[crf]"') from None
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"DenseCRF: image must be [H, W, 3] uint8, got {list(image.shape)} {image.dtype}")
        if probs.ndim != 3 or probs.shape[1:] != image.shape[:2] or probs.shape[0] < 1:
            raise ValueError(f"DenseCRF: probs must be [K, H, W] with the image's H, W {list(image.shape[:2])}, "
                             f"got {list(probs.shape)}")
        if not np.isfinite(probs).all():
            raise ValueError("DenseCRF: probs must be finite")
        K, H, W = probs.shape
        crf = dcrf.DenseCRF2D(W, H, K)
        crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
        crf.addPairwiseGaussian(sxy=self.gaussian_xy, compat=self.gaussian_weight)
        crf.addPairwiseBilateral(sxy=self.bilateral_xy, srgb=self.bilateral_rgb, rgbim=np.ascontiguousarray(image),
                                 compat=self.bilateral_weight)
        return np.asarray(crf.inference(self.iterations), dtype=np.float32).reshape(K, H, W)

    def labels(self, images: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """``images`` ``[B, 3, H, W]`` uint8 and ``log_probs`` ``[B, K, H, W]`` → the refined class
        per pixel ``[B, H, W]`` int64, on ``log_probs``' device."""
        if images.shape[0] != log_probs.shape[0] or images.shape[-2:] != log_probs.shape[-2:]:
            raise ValueError(f"DenseCRF: images {list(images.shape)} and log_probs {list(log_probs.shape)} differ "
                             "in batch or size")
        probs = log_probs.detach().float().exp().cpu().numpy()
        pixels = images.permute(0, 2, 3, 1).cpu().numpy()
        refined = np.stack([self.refine(img, p).argmax(0) for img, p in zip(pixels, probs)])
        return torch.from_numpy(refined).long().to(log_probs.device)
