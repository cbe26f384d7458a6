"""Built-in readers: PNG/JPEG (Pillow), TIFF family (tifffile), Zarr/OME-Zarr."""

from her2kit.hookspecs import ReaderSpec, hookimpl, lazy


def _zarr_can_open(path: str) -> bool:
    """A Zarr store, whatever its name (a directory with Zarr metadata, or a .zarr URL)."""
    from her2kit.readers.zarr import can_open

    return can_open(path)


@hookimpl
def her2kit_readers():
    return [
        ReaderSpec(
            name="pillow",
            description="PNG and JPEG images (no pyramid; mpp from the PNG pHYs / JPEG DPI when set)",
            factory=lazy("her2kit.readers.pillow:PillowSlide"),
            suffixes=(".png", ".jpg", ".jpeg"),
        ),
        ReaderSpec(
            name="tifffile",
            description="TIFF, tiled pyramidal OME-TIFF, SVS and NDPI through tifffile's zarr interface",
            factory=lazy("her2kit.readers.tiff:TiffSlide"),
            suffixes=(".tif", ".tiff", ".ome.tif", ".ome.tiff", ".svs", ".ndpi", ".btf"),
        ),
        ReaderSpec(
            name="zarr",
            description="Zarr arrays and OME-Zarr multiscale images (NGFF 0.4 and 0.5)",
            factory=lazy("her2kit.readers.zarr:ZarrSlide"),
            can_open=_zarr_can_open,
            suffixes=(".zarr", ".ome.zarr", ".zarr/", ".ome.zarr/"),
        ),
    ]
