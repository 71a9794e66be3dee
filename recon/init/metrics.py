"""How well a carved solid explains views it was not carved from."""
from __future__ import annotations

import torch

from recon.init.occupancy import OccupancyGrid
from recon.init.raster import cube_coverage
from recon.init.threads import single_threaded
from recon.init.views import TrainViews


def silhouettes(occ: OccupancyGrid, views: TrainViews) -> torch.Tensor:
    """(N, H, W) bool: pixels the solid covers in each view (drawn from its surface cells)."""
    c = torch.from_numpy(occ.centers(occ.surface_coords())).to(torch.float32)
    if len(c) == 0:
        return torch.zeros(views.n, views.height, views.width, dtype=torch.bool)
    return cube_coverage(views, c, occ.voxel_size)


@single_threaded
def silhouette_iou(occ: OccupancyGrid, views: TrainViews, mask_threshold: float = 0.5) -> list[float]:
    """IoU between the solid's silhouette and the mask, per view (views must have masks)."""
    if views.masks is None:
        raise ValueError("silhouette_iou needs views with masks")
    sil = silhouettes(occ, views)
    m = views.masks[:, 0] >= mask_threshold
    inter = (sil & m).flatten(1).sum(1).to(torch.float64)
    union = (sil | m).flatten(1).sum(1).to(torch.float64)
    return [float(i / u) if u > 0 else 1.0 for i, u in zip(inter, union)]
