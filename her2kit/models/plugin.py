"""Built-in models: Her2Net and the paper's baselines."""

from her2kit.hookspecs import ModelSpec, hookimpl, lazy


@hookimpl
def her2kit_models():
    return [
        ModelSpec(
            name="her2net",
            description="Her2Net: conv/deconv with SPP and TLSTM; pixel classes + staining-pattern head",
            factory=lazy("her2kit.models.her2net:Her2Net"),
        ),
        ModelSpec(
            name="her2net-no-tlstm",
            description="Her2Net ablation: without the TLSTM layers",
            factory=lazy("her2kit.models.her2net:Her2Net"),
            options={"tlstm": False},
        ),
        ModelSpec(
            name="her2net-no-spp",
            description="Her2Net ablation: without the SPP pyramid context modules",
            factory=lazy("her2kit.models.her2net:Her2Net"),
            options={"spp": False},
        ),
        ModelSpec(
            name="unet",
            description="U-Net baseline",
            factory=lazy("her2kit.models.unet:UNet"),
        ),
        ModelSpec(
            name="segnet",
            description="SegNet baseline (pooling indices)",
            factory=lazy("her2kit.models.segnet:SegNet"),
        ),
        ModelSpec(
            name="bayesian-segnet",
            description="Bayesian SegNet: Monte-Carlo dropout, mean prediction and uncertainty",
            factory=lazy("her2kit.models.segnet:BayesianSegNet"),
        ),
    ]
