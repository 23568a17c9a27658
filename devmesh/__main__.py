"""`python -m devmesh` is the `devmesh` command."""

from devmesh.cli import main

if __name__ == "__main__":
    main()
