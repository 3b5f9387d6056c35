"""Central slices of K class volumes at once: extraction and its adjoint, insertion.

These are the two hot kernels of 3D classification. The K Fourier volumes (centred rfft_3d of
the ``pad``-times padded maps, see :mod:`cryotorch.physics.projector`) are stored interleaved,
``(n_voxels, 2K)`` real, so that one gather of a voxel serves all K classes. A particle's
frequency ``k`` samples them at ``q = pad · Aᵀ (kx, ky, 0)``, ``|k| <= d / 2``, trilinearly,
read at ``-q`` and conjugated where ``qx < 0``. :func:`insert_central_slices` is the exact
adjoint of :func:`extract_central_slices` for the real inner product ``<a, b> = Re Σ a conj(b)``
over the stored entries.

The package:

- :mod:`~cryotorch.physics.slices.geometry`: where the slices fall (:class:`SliceGeometry`,
  trilinear neighbours), the interleaved layout, the Friedel bookkeeping of the ``kx = 0``
  column and ``x = 0`` plane;
- :mod:`~cryotorch.physics.slices.kernels`: the kernel choice (:class:`Kernels`, by name from
  :data:`KERNEL_CHOICES`: ``numba``, ``torch``, ``compiled``), carried by each geometry, and the
  entry points that dispatch on it;
- :mod:`~cryotorch.physics.slices.torch_kernels`: the torch code (the reference, CUDA, autograd);
- :mod:`~cryotorch.physics.slices.numba_kernels`: the numba CPU loops;
- :mod:`~cryotorch.physics.slices.reference`: :func:`extract_central_slices_reference`, with
  ``grid_sample`` on the full spectrum: slow, obviously correct; the tests hold the rest to it.

The kernels are chosen per geometry, ``slice_geometry(rotations, d, pad, kernels="torch")``,
not process-wide.
"""

from cryotorch.physics.slices.geometry import (
    SliceGeometry,
    deinterleave_classes,
    interleave_classes,
    sum_friedel_mates_on_x0_plane,
)
from cryotorch.physics.slices.kernels import (
    KERNEL_CHOICES,
    Kernels,
    as_kernels,
    extract_central_slices,
    insert_central_slices,
    insert_for_reconstruction,
    slice_geometry,
)
from cryotorch.physics.slices.reference import extract_central_slices_reference

__all__ = [
    "KERNEL_CHOICES",
    "Kernels",
    "SliceGeometry",
    "as_kernels",
    "deinterleave_classes",
    "extract_central_slices",
    "extract_central_slices_reference",
    "insert_central_slices",
    "insert_for_reconstruction",
    "interleave_classes",
    "slice_geometry",
    "sum_friedel_mates_on_x0_plane",
]
