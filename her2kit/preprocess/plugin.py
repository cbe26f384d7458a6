"""Built-in preprocessors: stain deconvolution and tissue detection."""

from her2kit.hookspecs import PreprocessorSpec, hookimpl, lazy


@hookimpl
def her2kit_preprocessors():
    return [
        PreprocessorSpec(
            name="hed",
            description="haematoxylin/DAB colour deconvolution to optical density (Ruifrok-Johnston vectors)",
            factory=lazy("her2kit.preprocess.stain:HedDeconvolver"),
            stage="stain",
        ),
        PreprocessorSpec(
            name="tissue-otsu",
            description="tissue mask at low resolution: Otsu on optical density, holes filled, specks removed",
            factory=lazy("her2kit.preprocess.tissue:TissueDetector"),
            stage="tissue",
        ),
    ]
