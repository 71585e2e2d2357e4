"""Process helpers every layer may use: the device choice and torch.distributed glue."""

__all__: list[str] = []
