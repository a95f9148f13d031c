"""medssl model zoo: architectures, task heads, model cards and weights."""
