"""The entry-point module: tells her2kit which readers this package provides.

Keep this module light. her2kit imports it while listing plugins (for
``her2kit --help`` and ``her2kit plugins``), so it only builds records; the
reader class, and openslide with it, are imported when a slide is opened.
"""

from her2kit.hookspecs import ReaderSpec, hookimpl, lazy

# Priority: her2kit's built-in tifffile reader has priority 0 and also claims
# .svs and .ndpi. OpenSlide is the reference implementation of the vendor
# formats (Aperio JPEG 2000 colour spaces, NDPI's 64-bit offsets and
# restart-marker tiles, vendor resolution properties), and installing this
# plugin is asking for it, so it wins for every suffix it claims. The other
# suffixes (.mrxs, .vms, .scn, .bif) only it claims. Pick the built-in anyway
# with open_slide(path, reader="tifffile").
PRIORITY = 10

SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif")


@hookimpl
def her2kit_readers():
    return [
        ReaderSpec(
            name="openslide",
            description="whole-slide images through OpenSlide (Aperio, Hamamatsu, 3DHISTECH, Leica, Ventana)",
            factory=lazy("her2kit_openslide.slide:OpenSlideSlide"),
            suffixes=SUFFIXES,
            priority=PRIORITY,
        )
    ]
