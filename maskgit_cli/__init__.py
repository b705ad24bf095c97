"""maskgit: MaskGIT image inpainting (VQGAN tokenizer + masked visual token modeling).

    import maskgit_cli as mg
    model = mg.load_model()                  # the bundled cats64 model, or a run folder
    filled = model.inpaint(photo, hole)      # PIL images or tensors, any size
    print(mg.fid_score("out/", "test/images").fid)

Importing the package is cheap: torch loads with the first of these calls (maskgit_cli.api).
"""

__version__ = "0.2.0"
__all__ = ["fid_score", "fill", "load_model"]


def __getattr__(name: str):
    if name in __all__:
        from maskgit_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'maskgit_cli' has no attribute {name!r}")
