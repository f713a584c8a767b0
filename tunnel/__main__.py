"""``python -m tunnel``: the command-line launcher."""

from .cli import main

if __name__ == "__main__":  # pragma: no branch
    main()
