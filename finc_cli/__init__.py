"""finc: FInC Flow normalizing flows with fast, exactly invertible k×k convolutions."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_preset", "build_model", "load_checkpoint"]


def __getattr__(name):
    # Lazy so that `import finc_cli` (and `finc --help`) never imports torch.
    if name == "load_preset":
        from finc_cli.config import load_preset

        return load_preset
    if name == "build_model":
        from finc_cli.model import build_model

        return build_model
    if name == "load_checkpoint":
        from finc_cli.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'finc_cli' has no attribute {name!r}")
