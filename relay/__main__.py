"""``python -m relay`` is the same program as the ``qwen-relay`` script."""

from .cli import main

if __name__ == "__main__":
    main()
