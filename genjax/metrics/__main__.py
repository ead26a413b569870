"""Makes the metrics' weight files.

    python -m genjax.metrics ship-classifier DATASET OUT.msgpack   train a versioned feature classifier
    python -m genjax.metrics convert-inception IN.pth OUT.npz      pytorch-fid's weights for torch-free use
"""

from __future__ import annotations

import os
import sys

import numpy as np

from genjax.metrics import classifier, inception


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in ("ship-classifier", "convert-inception"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, src, out = args
    if command == "ship-classifier":
        if os.path.exists(out):
            print(f"{out} exists; shipped weights are never overwritten: write a new version",
                  file=sys.stderr)
            return 1
        net = classifier.make_shipped(src, out)
        print(f"wrote {out}: test accuracy {net.test_accuracy:.4f}")
        for k, v in net.reference.items():
            print(f"  {k} = {v:.6g}")
    else:
        state = inception.read_state_dict(src)
        inception.variables_from_state_dict(state)  # refuse to write a file that would not load
        np.savez(out, **state)
        print(f"wrote {out} ({len(state)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
