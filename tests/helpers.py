"""What several test files share: the real dataset with a smaller test set, in this process or in a child."""

from bn_lenet.training.data import FashionMNIST


def small_test_set(d: FashionMNIST, n: int) -> FashionMNIST:
    """The full training set and the first n test examples (evaluation is the slow part of a short run)."""
    return FashionMNIST(d.train_images, d.train_labels, d.test_images[:n], d.test_labels[:n], d.source)


def child_script(test_images: int) -> str:
    """A `python -c` script that runs the CLI's main() on the real data with the first test_images test
    examples, so a test can signal, kill or resume a real run in its own process."""
    return f"""
import sys
from bn_lenet.training import data
from bn_lenet.cli import main
full = data.load_dataset
def small(root=None):
    d = full(root)
    n = {test_images}
    return data.FashionMNIST(d.train_images, d.train_labels, d.test_images[:n], d.test_labels[:n], d.source)
data.load_dataset = small
sys.exit(main(sys.argv[1:]))
"""
