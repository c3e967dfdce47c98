"""Version of metaformer_mm and the oldest torch it runs on."""
__version__ = '0.1.0'
# nn.LayerNorm(bias=False) (the MetaFormer baselines' bias-free norms) arrived in torch 2.1.
TORCH_MIN = '2.1'


def check_torch(version: str) -> None:
    """Raises ImportError when ``version`` (a torch version string) is older than TORCH_MIN."""
    def numbers(text: str) -> tuple:
        parts = []
        for part in text.split('+')[0].split('.')[:2]:
            digits = ''.join(c for c in part if c.isdigit())
            parts.append(int(digits or 0))
        return tuple(parts)

    if numbers(version) < numbers(TORCH_MIN):
        raise ImportError(f'metaformer_mm needs torch>={TORCH_MIN}, found torch {version}; '
                          f'install a newer torch (see README: Install)')
