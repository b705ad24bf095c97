"""maskgit: MaskGIT image inpainting (VQGAN tokenizer + masked visual token modeling)."""

__version__ = "0.1.0"
