"""Built-in readers: PNG/JPEG (Pillow), TIFF family (tifffile), Zarr/OME-Zarr."""

from her2kit.hookspecs import ReaderSpec, hookimpl, lazy


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
            suffixes=(".zarr", ".ome.zarr", ".zarr/", ".ome.zarr/"),
        ),
    ]
