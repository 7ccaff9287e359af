"""``python -m toklip.tokenize IMAGES OUT ...`` and ``torchrun --nproc-per-node 8 -m toklip.tokenize IMAGES OUT ...``."""

from toklip.tokenize.cli import main

if __name__ == "__main__":
    main()
