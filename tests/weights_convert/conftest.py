"""Fixtures of the weights_convert tests: small torchvision detectors saved once per session in both file formats."""
import pytest

from checkpoints import SMALL, save, small_detector


@pytest.fixture(scope="session")
def small_files(tmp_path_factory):
    """(variant, format) -> checkpoint path, each built and saved once per session."""
    made, root = {}, tmp_path_factory.mktemp("small")

    def get(variant="mask_v1_frozenbn", fmt="zip"):
        if (variant, fmt) not in made:
            made[(variant, fmt)] = save(small_detector(**SMALL[variant][0]).state_dict(),
                                        root / f"{variant}-{fmt}.pth", fmt)
        return made[(variant, fmt)]
    return get
