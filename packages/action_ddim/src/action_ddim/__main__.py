"""`python -m action_ddim`."""
from .cli import main

if __name__ == "__main__":
    main()
